package dispatcher

import (
	"crypto/sha256"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
)

// Buckets is how many sticky buckets a table lays over its routes.
const Buckets = 10000

// Route is one revision of a routing table and its share.
type Route struct {
	// Revision is the Revision's name (in the tenant's namespace).
	Revision string
	Percent  int
	Tag      string
}

// Table is an immutable routing table for one tenant: it is built once, published with
// one atomic swap, and never changed, so no request is routed by half an old table.
type Table struct {
	// Split names the TrafficSplit the table came from.
	Split  string
	Routes []Route
	// Sticky hashes session keys into buckets; without it every activity is placed by
	// weighted random choice.
	Sticky  bool
	buckets [Buckets]uint8
	cum     []int // cumulative percents, for weighted random choice
}

// NewTable builds a table. Buckets are assigned by weighted rendezvous hashing: each
// bucket goes to the route with the highest score -ln(u)/percent, where u is a hash of
// (bucket, revision). A route's share of buckets follows its percent, a bucket's route
// depends only on the routes and their percents (so every replica agrees without sharing
// state), a raised route never loses a bucket and a lowered one never gains one. In a
// two-route split (the canary case) raising one route therefore only moves sessions
// onto it. With three or more routes a stateless table cannot promise more: a bucket a
// lowered route gives up may go to any route that did not shrink.
func NewTable(split string, routes []Route, sticky bool) *Table {
	t := &Table{Split: split, Routes: append([]Route(nil), routes...), Sticky: sticky}
	sum := 0
	for _, r := range t.Routes {
		sum += r.Percent
		t.cum = append(t.cum, sum)
	}
	for b := range Buckets {
		best, bestScore := 0, math.Inf(-1)
		for i, r := range t.Routes {
			if r.Percent <= 0 {
				continue
			}
			h := sha256.Sum256([]byte(strconv.Itoa(b) + "\x00" + r.Revision))
			u := (float64(binary.BigEndian.Uint64(h[:8])>>11) + 0.5) / (1 << 53)
			score := -1 / (math.Log(u) / float64(r.Percent)) // higher is better: -w/ln(u)
			if score > bestScore {
				best, bestScore = i, score
			}
		}
		t.buckets[b] = uint8(best)
	}
	return t
}

// Bucket is the sticky bucket of a session key.
func Bucket(session string) int {
	h := sha256.Sum256([]byte(session))
	return int(binary.BigEndian.Uint32(h[:4]) % Buckets)
}

// Pick chooses the route for a session key: its bucket's route when the table is sticky
// and the key is not empty, else a weighted random route.
func (t *Table) Pick(session string) Route {
	if len(t.Routes) == 0 {
		return Route{}
	}
	if t.Sticky && session != "" {
		return t.Routes[t.buckets[Bucket(session)]]
	}
	n := rand.IntN(100)
	i := sort.SearchInts(t.cum, n+1)
	return t.Routes[min(i, len(t.Routes)-1)]
}

// ByTag returns the route with tag.
func (t *Table) ByTag(tag string) (Route, bool) {
	for _, r := range t.Routes {
		if r.Tag == tag {
			return r, true
		}
	}
	return Route{}, false
}

// Has reports whether the table routes to revision.
func (t *Table) Has(revision string) bool {
	for _, r := range t.Routes {
		if r.Revision == revision {
			return true
		}
	}
	return false
}

// Summary is the table in one line: "rev-a=90,rev-b=10".
func (t *Table) Summary() string {
	parts := make([]string, len(t.Routes))
	for i, r := range t.Routes {
		parts[i] = r.Revision + "=" + strconv.Itoa(r.Percent)
	}
	return strings.Join(parts, ",")
}
