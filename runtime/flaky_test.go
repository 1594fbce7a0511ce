package runtime_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/go-logr/logr/funcr"

	"github.com/packhost/packhost/runtime"
)

// The flaky example pack is what the rollout tests roll back: it must fail the share of
// activities its Revision's config sets, the same activities every time, and refuse a
// config it cannot read rather than guess.
func TestFlakyFailsItsConfiguredShare(t *testing.T) {
	e := newEngine(t)
	ctx := context.Background()
	const n = 400
	// failed handles n distinct activities and returns which ones failed.
	failed := func(t *testing.T, rev *runtime.Revision) map[int]bool {
		t.Helper()
		out := map[int]bool{}
		for i := range n {
			got, err := rev.Handle(ctx, userMsg(fmt.Sprintf("user-%d", i%7), fmt.Sprintf(`{"n":%d}`, i)))
			switch {
			case errors.Is(err, runtime.ErrInvalidOutput):
				out[i] = true
			case err != nil:
				t.Fatalf("activity %d: %v", i, err)
			case len(got) != 1 || string(got[0].Payload) != fmt.Sprintf(`{"n":%d}`, i):
				t.Fatalf("activity %d was not echoed: %+v", i, got)
			}
		}
		return out
	}
	withConfig := func(c map[string]string) []revOpt {
		return []revOpt{func(rc *runtime.RevisionConfig) { rc.Config = c }}
	}
	for _, tc := range []struct {
		config   map[string]string
		min, max int
	}{
		{nil, 0, 0},
		{map[string]string{"errorPercent": "0"}, 0, 0},
		{map[string]string{"errorPercent": "30"}, n * 22 / 100, n * 38 / 100},
		{map[string]string{"errorPercent": "100"}, n, n},
	} {
		t.Run(fmt.Sprintf("errorPercent=%q", tc.config["errorPercent"]), func(t *testing.T) {
			first := failed(t, load(t, e, withConfig(tc.config), "flaky"))
			t.Logf("%d of %d activities failed", len(first), n)
			if len(first) < tc.min || len(first) > tc.max {
				t.Fatalf("%d of %d activities failed, want %d to %d", len(first), n, tc.min, tc.max)
			}
			// Another revision of the same config fails exactly the same activities.
			again := failed(t, load(t, e, withConfig(tc.config), "flaky"))
			for i := range n {
				if first[i] != again[i] {
					t.Fatalf("activity %d failed=%v in one revision, %v in another", i, first[i], again[i])
				}
			}
		})
	}
	for _, bad := range []string{"abc", "101", "-5", "30%", " 30"} {
		t.Run(fmt.Sprintf("bad errorPercent=%q", bad), func(t *testing.T) {
			var mu sync.Mutex
			var logged strings.Builder
			rev := load(t, e, []revOpt{func(rc *runtime.RevisionConfig) {
				rc.Config = map[string]string{"errorPercent": bad}
				rc.Logger = funcr.New(func(prefix, args string) {
					mu.Lock()
					defer mu.Unlock()
					logged.WriteString(args)
				}, funcr.Options{})
			}}, "flaky")
			if _, err := rev.Handle(ctx, msg(`{}`)); !errors.Is(err, runtime.ErrInvalidOutput) {
				t.Fatalf("got %v, want a guest error", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if want := fmt.Sprintf("config errorPercent %q is not a whole number from 0 to 100", bad); !strings.Contains(logged.String(), strings.Trim(fmt.Sprintf("%q", want), `"`)) {
				t.Fatalf("the guest's log does not say what is wrong: want %s in\n%s", want, logged.String())
			}
		})
	}
}
