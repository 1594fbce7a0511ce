package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestDefaultMemoryBudget(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name  string
		files []string
		want  int64
	}{
		{"cgroup v2 limit", []string{write("v2", "2147483648\n")}, 1503238553},
		{"cgroup v2 without a limit", []string{write("v2max", "max\n")}, 0},
		{"cgroup v1 without a limit", []string{filepath.Join(dir, "absent"), write("v1", "9223372036854771712\n")}, 0},
		{"cgroup v1 limit", []string{filepath.Join(dir, "absent"), write("v1b", "1073741824")}, 751619276},
		{"no cgroup", []string{filepath.Join(dir, "absent")}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := defaultMemoryBudget(tc.files); got != tc.want {
				t.Fatalf("got %d, want %d", got, tc.want)
			}
		})
	}
}
