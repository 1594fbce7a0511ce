package runtime_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/go-logr/logr"

	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/runtime"
)

// loadPacks starts a revision of the given pack bytes (main first) on store.
func loadPacks(t *testing.T, store runtime.Store, mods ...[]byte) *runtime.Revision {
	t.Helper()
	ctx := context.Background()
	e := newEngine(t)
	cfg := runtime.RevisionConfig{Name: "ns/rev", Env: "prod", Tenant: "acme", Policy: allowAll, Logger: logr.Discard(), Store: store}
	for _, b := range mods {
		p, err := e.Compile(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Packs = append(cfg.Packs, p)
	}
	rev, err := e.NewRevision(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rev.Close(context.Background()) })
	return rev
}

// surveyAs is the survey pack under another manifest: the same three questions in each
// flow it declares, each flow parking its own answers.
func surveyAs(t *testing.T, packID string, flows ...string) []byte {
	t.Helper()
	var decl []string
	for _, f := range flows {
		decl = append(decl, fmt.Sprintf(`{"id":%q,"type":%q,"entry":true}`, f, f))
	}
	return packs.WithManifest(pack(t, "survey"), fmt.Sprintf(`{"abi":1,"pack_id":%q,"version":"1","flows":[%s],"capabilities":{"session":true}}`, packID, strings.Join(decl, ",")))
}

// turn is one activity of a session and what it must get: a reply containing want, or
// an error matching wantErr.
type turn struct {
	name              string
	user, pack, flow  string
	payload           string
	want              string
	wantErr           error
	wantErrContaining []string
}

func (tc turn) run(t *testing.T, rev *runtime.Revision, store *runtime.MemStore) {
	t.Helper()
	a := userMsg(tc.user, tc.payload)
	a.PackID, a.FlowID = tc.pack, tc.flow
	before := store.Commits
	out, err := rev.Handle(context.Background(), a)
	if tc.wantErr != nil {
		if !errors.Is(err, tc.wantErr) {
			t.Fatalf("%s: got %v (%+v), want %v", tc.name, err, out, tc.wantErr)
		}
		for _, s := range tc.wantErrContaining {
			if !strings.Contains(err.Error(), s) {
				t.Fatalf("%s: error %q does not name %s", tc.name, err, s)
			}
		}
		if store.Commits != before {
			t.Fatalf("%s: a refused activity changed state", tc.name)
		}
		return
	}
	if err != nil {
		t.Fatalf("%s: %v", tc.name, err)
	}
	if len(out) != 1 || !strings.Contains(string(out[0].Payload), tc.want) {
		t.Fatalf("%s: replied %+v, want %s", tc.name, out, tc.want)
	}
}

// The case of issue 16: on a survey+echo revision, an activity with flow_id "echo"
// while the survey is parked runs echo, and the survey stays parked for the session's
// next activity that names no flow.
func TestExplicitFlowWhileAnotherIsParked(t *testing.T) {
	store := runtime.NewMemStore()
	rev := loadPacks(t, store, pack(t, "survey"), pack(t, "echo"))
	for _, tc := range []turn{
		{name: "the survey starts and parks", user: "ann", payload: `{}`, want: `"step":1`},
		{name: "flow_id echo runs echo", user: "ann", flow: "echo", payload: `{"x":1}`, want: `{"x":1}`},
		{name: "pack_id echo runs echo's entry flow", user: "ann", pack: "echo", payload: `{"y":2}`, want: `{"y":2}`},
		{name: "a flow_id that names no flow", user: "ann", flow: "nope", wantErr: runtime.ErrNoSuchFlow, wantErrContaining: []string{`"nope"`}},
		{name: "a pack_id that names no pack", user: "ann", pack: "nope", wantErr: runtime.ErrNoSuchFlow, wantErrContaining: []string{`"nope"`}},
		{name: "a flow_id that only looks like a path", user: "ann", flow: "../survey", wantErr: runtime.ErrNoSuchFlow},
		{name: "a flow of another pack than pack_id", user: "ann", pack: "echo", flow: "survey", wantErr: runtime.ErrNoSuchFlow},
		{name: "no flow resumes the parked survey", user: "ann", payload: `"Ann"`, want: `"step":2`},
		{name: "flow_id survey resumes it too", user: "ann", flow: "survey", payload: `"operators"`, want: `"step":3`},
	} {
		tc.run(t, rev, store)
	}
	if n := store.Waits(); n != 1 {
		t.Fatalf("%d waits parked, want the survey's one", n)
	}
}

// One user may have a wait parked in each flow; an explicit flow_id (and pack_id)
// selects its own; an activity naming no flow resumes the one parked wait, and is
// refused, naming them, while several are. Another user naming ann's flows gets his own.
func TestOneWaitPerFlow(t *testing.T) {
	store := runtime.NewMemStore()
	rev := loadPacks(t, store, surveyAs(t, "survey", "survey", "feedback"), surveyAs(t, "quiz", "survey"))
	for _, tc := range []turn{
		{name: "survey/survey parks", user: "ann", flow: "survey", payload: `{}`, want: `"step":1`},
		{name: "survey/feedback parks beside it", user: "ann", flow: "feedback", payload: `{}`, want: `"step":1`},
		{name: "quiz/survey parks beside them", user: "ann", pack: "quiz", payload: `{}`, want: `"step":1`},
		{name: "no flow: ambiguous", user: "ann", payload: `"?"`, wantErr: runtime.ErrAmbiguousFlow,
			wantErrContaining: []string{`flow "survey" of pack "survey"`, `flow "feedback" of pack "survey"`, `flow "survey" of pack "quiz"`}},
		{name: "flow_id survey is the first pack's", user: "ann", flow: "survey", payload: `"S1"`, want: `"step":2`},
		{name: "pack_id quiz with flow_id survey", user: "ann", pack: "quiz", flow: "survey", payload: `"Q1"`, want: `"step":2`},
		{name: "pack_id survey alone: two parked there", user: "ann", pack: "survey", payload: `"?"`, wantErr: runtime.ErrAmbiguousFlow,
			wantErrContaining: []string{`"survey"`, `"feedback"`}},
		{name: "pack_id quiz alone resumes quiz's one", user: "ann", pack: "quiz", payload: `"Q2"`, want: `"step":3`},
		{name: "bob naming ann's flow starts his own", user: "bob", flow: "feedback", payload: `"B1"`, want: `"step":1`},
		{name: "feedback 2", user: "ann", flow: "feedback", payload: `"F1"`, want: `"step":2`},
		{name: "feedback 3", user: "ann", flow: "feedback", payload: `"F2"`, want: `"step":3`},
		{name: "feedback done", user: "ann", flow: "feedback", payload: `"F3"`, want: `{"done":true,"answers":["F1","F2","F3"]}`},
		{name: "quiz done", user: "ann", pack: "quiz", flow: "survey", payload: `"Q3"`, want: `{"done":true,"answers":["Q1","Q2","Q3"]}`},
		{name: "no flow: survey/survey is the one left", user: "ann", payload: `"S2"`, want: `"step":3`},
		{name: "survey done", user: "ann", payload: `"S3"`, want: `{"done":true,"answers":["S1","S2","S3"]}`},
	} {
		tc.run(t, rev, store)
	}
	if got := store.Parked(runtime.SessionKey("prod", "acme", userMsg("ann", ""))); len(got) != 0 {
		t.Fatalf("ann's completed flows left waits: %+v", got)
	}
	if got := store.Parked(runtime.SessionKey("prod", "acme", userMsg("bob", ""))); len(got) != 1 || got[0].Flow != "feedback" {
		t.Fatalf("bob's waits: %+v", got)
	}
}

// Two flows of one session driven at once: each activity parks or resumes its own
// flow's wait exactly once, whichever commits first (the other re-runs).
func TestConcurrentTurnsOnTwoFlows(t *testing.T) {
	store := runtime.NewMemStore()
	rev := loadPacks(t, store, surveyAs(t, "survey", "survey", "feedback"))
	flows := []string{"survey", "feedback"}
	for round, want := range []string{`"step":1`, `"step":2`, `"step":3`, `"done":true`} {
		var wg sync.WaitGroup
		got := make([]string, len(flows))
		for i, flow := range flows {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a := userMsg("ann", fmt.Sprintf(`"%s-%d"`, flow, round))
				a.FlowID = flow
				out, err := rev.Handle(context.Background(), a)
				if err != nil {
					got[i] = err.Error()
					return
				}
				got[i] = string(out[0].Payload)
			}()
		}
		wg.Wait()
		for i, flow := range flows {
			if !strings.Contains(got[i], want) {
				t.Fatalf("round %d, flow %s: %s, want %s (all: %q)", round, flow, got[i], want, got)
			}
			if round == 3 && got[i] != fmt.Sprintf(`{"done":true,"answers":["%[1]s-1","%[1]s-2","%[1]s-3"]}`, flow) {
				t.Fatalf("flow %s collected %s: a turn was lost or taken by the other flow", flow, got[i])
			}
		}
	}
	if n := store.Waits(); n != 0 {
		t.Fatalf("%d waits left after both flows completed", n)
	}
}

// A session parks at most MaxParkedFlows flows: the next park is refused to the guest
// (the survey then fails its activity), and nothing of that activity is kept.
func TestParkedFlowsAreBounded(t *testing.T) {
	store := runtime.NewMemStore()
	var flows []string
	for i := range runtime.MaxParkedFlows + 1 {
		flows = append(flows, fmt.Sprintf("f%d", i))
	}
	rev := loadPacks(t, store, surveyAs(t, "survey", flows...))
	for _, f := range flows[:runtime.MaxParkedFlows] {
		turn{name: "park " + f, user: "ann", flow: f, payload: `{}`, want: `"step":1`}.run(t, rev, store)
	}
	turn{name: "one flow too many", user: "ann", flow: flows[runtime.MaxParkedFlows], payload: `{}`, wantErr: runtime.ErrInvalidOutput}.run(t, rev, store)
	if n := store.Waits(); n != runtime.MaxParkedFlows {
		t.Fatalf("%d waits parked, want %d", n, runtime.MaxParkedFlows)
	}
	// A parked flow still takes its turns: it replaces its own wait.
	turn{name: "a parked flow continues", user: "ann", flow: "f0", payload: `"a"`, want: `"step":2`}.run(t, rev, store)
}

// A session's parked data, over all its flows, is at most MaxValueLen: a park that
// would pass it is refused to the guest, and the flow keeps the wait it had.
func TestParkedDataIsBounded(t *testing.T) {
	store := runtime.NewMemStore()
	rev := loadPacks(t, store, surveyAs(t, "survey", "a", "b"))
	big := func(n int) string { return `"` + strings.Repeat("x", n) + `"` }
	for _, tc := range []turn{
		{name: "a starts", user: "ann", flow: "a", payload: `{}`, want: `"step":1`},
		{name: "a parks 200 KiB", user: "ann", flow: "a", payload: big(200 << 10), want: `"step":2`},
		{name: "b starts", user: "ann", flow: "b", payload: `{}`, want: `"step":1`},
		{name: "b would pass the session's bound", user: "ann", flow: "b", payload: big(runtime.MaxValueLen - 200<<10), wantErr: runtime.ErrInvalidOutput},
		{name: "b parks what fits", user: "ann", flow: "b", payload: big(1 << 10), want: `"step":2`},
	} {
		tc.run(t, rev, store)
	}
	ws := store.Parked(runtime.SessionKey("prod", "acme", userMsg("ann", "")))
	total := 0
	for _, w := range ws {
		total += len(w.Data)
	}
	if len(ws) != 2 || total > runtime.MaxValueLen {
		t.Fatalf("ann's waits: %d holding %d bytes", len(ws), total)
	}
}

// racingStore runs race once, right after an activity armed for it reads a session's
// waits: another writer changes them before that activity commits.
type racingStore struct {
	*runtime.MemStore
	race atomic.Pointer[func()]
}

func (s *racingStore) Begin(ctx context.Context) (runtime.Txn, error) {
	txn, err := s.MemStore.Begin(ctx)
	return &racingTxn{Txn: txn, s: s}, err
}

type racingTxn struct {
	runtime.Txn
	s *racingStore
}

func (t *racingTxn) Waits(session string) ([]runtime.Wait, error) {
	ws, err := t.Txn.Waits(session)
	if race := t.s.race.Swap(nil); race != nil {
		(*race)()
	}
	return ws, err
}

// An activity naming no flow is refused as ambiguous only on a read that still holds
// at commit: when another activity completes one of two parked flows in between, it
// runs again and resumes the one left.
func TestAmbiguityIsDecidedOnCommittedWaits(t *testing.T) {
	store := &racingStore{MemStore: runtime.NewMemStore()}
	rev := loadPacks(t, store, surveyAs(t, "survey", "a", "b"))
	for _, tc := range []turn{
		{name: "a parks", user: "ann", flow: "a", payload: `{}`, want: `"step":1`},
		{name: "b parks", user: "ann", flow: "b", payload: `{}`, want: `"step":1`},
	} {
		tc.run(t, rev, store.MemStore)
	}
	session := runtime.SessionKey("prod", "acme", userMsg("ann", ""))
	race := func() {
		txn, _ := store.MemStore.Begin(context.Background())
		ws, _ := txn.Waits(session)
		txn.SetWaits(session, slices.DeleteFunc(ws, func(w runtime.Wait) bool { return w.Flow == "a" }))
		if err := txn.Commit(context.Background()); err != nil {
			t.Error(err)
		}
	}
	store.race.Store(&race)
	out, err := rev.Handle(context.Background(), userMsg("ann", `"B1"`))
	if err != nil || !strings.Contains(string(out[0].Payload), `"step":2`) {
		t.Fatalf("no flow, after a's wait was cleared under it: %+v %v; want b's step 2", out, err)
	}
}
