package dispatcher

import (
	"fmt"
	"math"
	"testing"
)

func share(t *Table) map[string]float64 {
	out := map[string]float64{}
	for _, i := range t.buckets {
		out[t.Routes[i].Revision] += 100.0 / Buckets
	}
	return out
}

func TestTableSharesFollowPercents(t *testing.T) {
	for _, routes := range [][]Route{
		{{Revision: "v1", Percent: 90}, {Revision: "v2", Percent: 10}},
		{{Revision: "a", Percent: 33}, {Revision: "b", Percent: 33}, {Revision: "c", Percent: 34}},
		{{Revision: "a", Percent: 100}, {Revision: "dark", Percent: 0}},
	} {
		tab := NewTable("s", routes, true)
		got := share(tab)
		for _, r := range routes {
			if math.Abs(got[r.Revision]-float64(r.Percent)) > 1.5 {
				t.Errorf("%v: %s holds %.2f%% of buckets, want %d%%", routes, r.Revision, got[r.Revision], r.Percent)
			}
		}
	}
}

// In a two-route split, raising one route's percent only moves sessions onto it. With
// more routes, a raised route never loses a session and a lowered one never gains one.
func TestRaisingAShareOnlyMovesOntoIt(t *testing.T) {
	canary := [][]Route{
		{{Revision: "v1", Percent: 90}, {Revision: "v2", Percent: 10}},
		{{Revision: "v1", Percent: 50}, {Revision: "v2", Percent: 50}},
		{{Revision: "v1", Percent: 0}, {Revision: "v2", Percent: 100}},
	}
	three := [][]Route{
		{{Revision: "a", Percent: 60}, {Revision: "b", Percent: 30}, {Revision: "c", Percent: 10}},
		{{Revision: "a", Percent: 40}, {Revision: "b", Percent: 30}, {Revision: "c", Percent: 30}},
		{{Revision: "a", Percent: 20}, {Revision: "b", Percent: 50}, {Revision: "c", Percent: 30}},
	}
	for _, seq := range [][][]Route{canary, three} {
		for i := 1; i < len(seq); i++ {
			before, after := NewTable("s", seq[i-1], true), NewTable("s", seq[i], true)
			delta := map[string]int{}
			for j := range seq[i] {
				delta[seq[i][j].Revision] = seq[i][j].Percent - seq[i-1][j].Percent
			}
			moved := 0
			for b := range Buckets {
				from, to := before.Routes[before.buckets[b]].Revision, after.Routes[after.buckets[b]].Revision
				if from == to {
					continue
				}
				moved++
				if delta[from] > 0 || delta[to] < 0 {
					t.Fatalf("%v -> %v: bucket %d moved %s -> %s", seq[i-1], seq[i], b, from, to)
				}
				if len(seq[i]) == 2 && delta[to] <= 0 {
					t.Fatalf("%v -> %v: bucket %d moved %s -> %s, not onto the raised route", seq[i-1], seq[i], b, from, to)
				}
			}
			if moved == 0 {
				t.Fatalf("%v -> %v moved nothing", seq[i-1], seq[i])
			}
		}
	}
}

func TestPickIsStickyAndRandomWithoutSession(t *testing.T) {
	tab := NewTable("s", []Route{{Revision: "v1", Percent: 90}, {Revision: "v2", Percent: 10}}, true)
	for i := range 100 {
		key := fmt.Sprintf("user-%d", i)
		first := tab.Pick(key)
		for range 5 {
			if tab.Pick(key) != first {
				t.Fatalf("session %s moved between picks of one table", key)
			}
		}
	}
	counts := map[string]int{}
	for range 20000 {
		counts[tab.Pick("").Revision]++
	}
	if got := float64(counts["v2"]) / 200; math.Abs(got-10) > 1.5 {
		t.Fatalf("weighted random sent %.2f%% to v2, want 10%%", got)
	}
	none := NewTable("s", []Route{{Revision: "v1", Percent: 50}, {Revision: "v2", Percent: 50}}, false)
	seen := map[string]bool{}
	for range 200 {
		seen[none.Pick("same-user").Revision] = true
	}
	if len(seen) != 2 {
		t.Fatal("stickiness none kept one session on one revision")
	}
}
