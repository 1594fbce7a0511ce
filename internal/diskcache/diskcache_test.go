package diskcache

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestPruneRemovesTheOldestUntilUnderTheLimit(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	write := func(rel string, size int, age time.Duration) string {
		t.Helper()
		path := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, now.Add(-age), now.Add(-age)); err != nil {
			t.Fatal(err)
		}
		return path
	}
	oldest := write("compiled/a", 400, 5*time.Hour)
	inUse := write("packs/sha256/b", 300, 4*time.Hour)
	old := write("compiled/c", 300, 3*time.Hour)
	recent := write("packs/sha256/d", 300, 2*time.Hour)
	newest := write("compiled/e", 200, time.Hour)

	removed, freed, err := Prune(dir, 1000, func(path string) bool { return path == inUse })
	if err != nil {
		t.Fatal(err)
	}
	// 1,500 bytes against 1,000: the two oldest not kept go (700 bytes), leaving 800.
	if removed != 2 || freed != 700 {
		t.Errorf("removed %d files, %d bytes; want 2 and 700", removed, freed)
	}
	for path, want := range map[string]bool{oldest: false, inUse: true, old: false, recent: true, newest: true} {
		if _, err := os.Stat(path); (err == nil) != want {
			t.Errorf("%s: exists=%v, want %v", path, err == nil, want)
		}
	}
	// Under the limit, nothing goes.
	if removed, _, err := Prune(dir, 1000, nil); err != nil || removed != 0 {
		t.Errorf("second prune removed %d (%v), want 0", removed, err)
	}
	// A directory that does not exist yet is empty, not an error.
	if _, _, err := Prune(filepath.Join(dir, "nope"), 1, nil); err != nil {
		t.Errorf("missing directory: %v", err)
	}
}
