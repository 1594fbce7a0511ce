package runtime_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	goruntime "runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"

	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/runtime"
)

// probe is one copy of the identify test pack (examples/packs/hostile/identify) in a
// revision: its settings (describe=… identify=…) and the providers its manifest binds.
type probe struct {
	settings  string
	providers string // JSON list; default: probe and other, without hints
}

// guestCalls counts the identify test pack's calls by pack and what it logged
// ("describe", "identify <type>").
type guestCalls struct {
	mu sync.Mutex
	n  map[string]int
}

func (g *guestCalls) count(pack, what string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n[pack+": "+what]
}

// loadProbes starts a revision of copies of the identify test pack, main first: copy i
// is pack "p<i>" and reads its settings from PROBE_<i>.
func loadProbes(t testing.TB, e *runtime.Engine, limits runtime.Limits, ps ...probe) (*runtime.Revision, *guestCalls) {
	t.Helper()
	ctx := context.Background()
	calls := &guestCalls{n: map[string]int{}}
	cfg := runtime.RevisionConfig{Name: "ns/probes", Env: "prod", Tenant: "acme", Policy: allowAll, Limits: limits, Config: map[string]string{}}
	cfg.Logger = funcr.NewJSON(func(obj string) {
		var line struct{ Pack, Message string }
		if json.Unmarshal([]byte(obj), &line) == nil && line.Message != "" {
			calls.mu.Lock()
			calls.n[line.Pack+": "+line.Message]++
			calls.mu.Unlock()
		}
	}, funcr.Options{})
	for i, p := range ps {
		env := fmt.Sprintf("PROBE_%d", i)
		cfg.Policy.Env = append(cfg.Policy.Env, env)
		cfg.Config[env] = p.settings
		providers := p.providers
		if providers == "" {
			providers = `[{"type":"probe"},{"type":"other"}]`
		}
		manifest := fmt.Sprintf(`{"abi":1,"pack_id":"p%d","version":"1","flows":[{"id":"main","entry":true}],"providers":%s,"capabilities":{"wasi":{"env":[%q]}}}`, i, providers, env)
		pk, err := e.Compile(ctx, packs.WithManifest(pack(t, "hostile/identify"), manifest))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Packs = append(cfg.Packs, pk)
	}
	rev, err := e.NewRevision(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rev.Close(context.Background()) })
	return rev, calls
}

// Headers with a repeated name in two spellings, to see what each pack receives.
var probeHeaders = []runtime.Header{{Name: "X-A", Value: "1"}, {Name: "X-B", Value: "2"}, {Name: "x-a", Value: "3"}}

const allHeaders = "X-A=1;X-B=2;x-a=3"

func identifyAll(t *testing.T, rev *runtime.Revision, scoped bool, types ...string) map[string]runtime.Identity {
	t.Helper()
	got, err := rev.Identify(context.Background(), runtime.IdentifyRequest{ProviderTypes: types, Headers: probeHeaders}, scoped)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(types) {
		t.Fatalf("asked %d types, answered %d: %+v", len(types), len(got), got)
	}
	return got
}

// want is an expected identify outcome: its name, the pack, and for Identified the
// headers the pack received; for Error, the error it wraps.
type want struct {
	outcome, pack, headers string
	err                    error
}

func (w want) check(t *testing.T, typ string, got runtime.Identity) {
	t.Helper()
	if got.OutcomeName() != w.outcome || got.Pack != w.pack {
		t.Errorf("%s: %s from %q (%v), want %s from %q", typ, got.OutcomeName(), got.Pack, got.Err, w.outcome, w.pack)
	}
	if w.outcome == "Identified" && (got.ProviderID != w.headers || got.ProviderType != typ) {
		t.Errorf("%s: pack received headers %q for type %q, want %q", typ, got.ProviderID, got.ProviderType, w.headers)
	}
	if w.err != nil && !errors.Is(got.Err, w.err) {
		t.Errorf("%s: error %v, want %v", typ, got.Err, w.err)
	}
	if (got.Err != nil) != (w.outcome == "Error") {
		t.Errorf("%s: error %v with outcome %s", typ, got.Err, got.OutcomeName())
	}
}

// The lattice per type and per pack: main first, Identified > Error > NoMatch >
// Unsupported, a type done once Identified, and a pack that fails reported for the
// types it was asked while the probe goes on.
func TestIdentifyLattice(t *testing.T) {
	e := newEngine(t)
	onlyProbe := `[{"type":"probe"}]`
	for _, tc := range []struct {
		name  string
		packs []probe
		types []string
		want  map[string]want
		// notAsked are pack/type pairs whose identify must not have run.
		notAsked [][2]string
	}{
		{"an overlay identifies after the main pack's NoMatch",
			[]probe{{settings: "identify=nomatch"}, {settings: "identify=echo"}}, []string{"probe", "other", "sms"},
			map[string]want{"probe": {outcome: "Identified", pack: "p1", headers: allHeaders}, "other": {outcome: "Identified", pack: "p1", headers: allHeaders}, "sms": {outcome: "Unsupported"}}, nil},
		{"a type drops out once the main pack identified it",
			[]probe{{settings: "identify=echo", providers: onlyProbe}, {settings: "identify=echo"}}, []string{"probe", "other"},
			map[string]want{"probe": {outcome: "Identified", pack: "p0", headers: allHeaders}, "other": {outcome: "Identified", pack: "p1", headers: allHeaders}},
			[][2]string{{"p1", "probe"}}},
		{"a trap is reported and the probe goes on",
			[]probe{{settings: "identify=trap"}, {settings: "identify=echo", providers: onlyProbe}}, []string{"probe", "other"},
			map[string]want{"probe": {outcome: "Identified", pack: "p1", headers: allHeaders}, "other": {outcome: "Error", pack: "p0", err: runtime.ErrTrap}}, nil},
		{"an error ranks above a later NoMatch",
			[]probe{{settings: "identify=garbage"}, {settings: "identify=nomatch"}}, []string{"probe"},
			map[string]want{"probe": {outcome: "Error", pack: "p0", err: runtime.ErrInvalidOutput}}, nil},
		{"NoMatch ranks above Unsupported",
			[]probe{{settings: "identify=nomatch", providers: onlyProbe}}, []string{"probe", "other"},
			map[string]want{"probe": {outcome: "NoMatch", pack: "p0"}, "other": {outcome: "Unsupported"}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rev, calls := loadProbes(t, e, runtime.Limits{}, tc.packs...)
			got := identifyAll(t, rev, false, tc.types...)
			for typ, w := range tc.want {
				w.check(t, typ, got[typ])
			}
			for _, pt := range tc.notAsked {
				if n := calls.count(pt[0], "identify "+pt[1]); n != 0 {
					t.Errorf("pack %s was asked about %s %d times after it was identified", pt[0], pt[1], n)
				}
			}
		})
	}
}

// A pack that runs until the deadline is reported with a timeout, and so are the packs
// the probe had no time left to ask: the whole probe runs under one deadline.
func TestIdentifyProbeHasOneDeadline(t *testing.T) {
	rev, calls := loadProbes(t, newEngine(t), runtime.Limits{Timeout: 300 * time.Millisecond},
		probe{settings: "identify=loop", providers: `[{"type":"probe"}]`}, probe{settings: "identify=echo"})
	var got map[string]runtime.Identity
	err := within(t, 30*time.Second, "a looping identify held the probe past its deadline", func() (err error) {
		got, err = rev.Identify(context.Background(), runtime.IdentifyRequest{ProviderTypes: []string{"probe", "other"}}, false)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	want{outcome: "Error", pack: "p0", err: runtime.ErrTimeout}.check(t, "probe", got["probe"])
	want{outcome: "Error", pack: "p1", err: runtime.ErrTimeout}.check(t, "other", got["other"])
	if n := calls.count("p1", "identify other"); n != 0 {
		t.Errorf("pack p1 ran %d times after the probe's deadline", n)
	}
	// The revision serves the next probe: the looping instance was discarded.
	got = identifyAll(t, rev, false, "other")
	want{outcome: "Identified", pack: "p1", headers: allHeaders}.check(t, "other", got["other"])
}

// Scoped identify passes each pack only the headers its hint names: the hint its
// describe-identify gives, else its manifest's; a pack with neither gets them all.
func TestScopedIdentifyUsesDescribeHints(t *testing.T) {
	e := newEngine(t)
	hinted := `[{"type":"probe","identify":{"headers":["X-B"]}},{"type":"other"}]`
	for _, tc := range []struct {
		name   string
		packs  []probe
		scoped bool
		want   map[string]want
	}{
		{"mixed: a hinted main pack and an unhinted overlay",
			[]probe{{settings: "describe=hint:x-a hinttypes=probe", providers: `[{"type":"probe"}]`}, {settings: "describe=none", providers: `[{"type":"other"}]`}}, true,
			map[string]want{"probe": {outcome: "Identified", pack: "p0", headers: "X-A=1;x-a=3"}, "other": {outcome: "Identified", pack: "p1", headers: allHeaders}}},
		{"the manifest's hint when the pack describes nothing",
			[]probe{{settings: "describe=none", providers: hinted}}, true,
			map[string]want{"probe": {outcome: "Identified", pack: "p0", headers: "X-B=2"}, "other": {outcome: "Identified", pack: "p0", headers: allHeaders}}},
		{"describe's hint over the manifest's",
			[]probe{{settings: "describe=hint:X-A", providers: hinted}}, true,
			map[string]want{"probe": {outcome: "Identified", pack: "p0", headers: "X-A=1;x-a=3"}, "other": {outcome: "Identified", pack: "p0", headers: "X-A=1;x-a=3"}}},
		{"a hint without headers passes none",
			[]probe{{settings: "describe=hint:"}}, true,
			map[string]want{"probe": {outcome: "Identified", pack: "p0", headers: ""}}},
		{"unscoped identify passes every header",
			[]probe{{settings: "describe=hint:x-a", providers: hinted}}, false,
			map[string]want{"probe": {outcome: "Identified", pack: "p0", headers: allHeaders}}},
		{"an unhinted main pack's NoMatch, then a hinted overlay",
			[]probe{{settings: "identify=nomatch"}, {settings: "describe=hint:x-b"}}, true,
			map[string]want{"probe": {outcome: "Identified", pack: "p1", headers: "X-B=2"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rev, _ := loadProbes(t, e, runtime.Limits{}, tc.packs...)
			types := make([]string, 0, len(tc.want))
			for typ := range tc.want {
				types = append(types, typ)
			}
			got := identifyAll(t, rev, tc.scoped, types...)
			for typ, w := range tc.want {
				w.check(t, typ, got[typ])
			}
		})
	}
}

// A pack's identify reads repeated headers combined, as HTTP combines them, and the
// list as sent.
func TestIdentifyHeadersKeepRepeats(t *testing.T) {
	rev, _ := loadProbes(t, newEngine(t), runtime.Limits{}, probe{})
	got := identifyAll(t, rev, false, "probe")["probe"]
	if got.ProviderID != allHeaders || got.EndpointID != "1, 3" {
		t.Fatalf("headers as listed %q, x-a as a map %q", got.ProviderID, got.EndpointID)
	}
}

// describe-identify runs once per pack for the revision's life, however many requests
// ask at once, and a new revision of the same pack asks again.
func TestDescribeIsCachedPerRevision(t *testing.T) {
	e := newEngine(t)
	ps := []probe{{settings: "describe=hint:x-a hinttypes=probe", providers: `[{"type":"probe"}]`}, {settings: "describe=none"}}
	rev, calls := loadProbes(t, e, runtime.Limits{}, ps...)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			got, err := rev.Identify(context.Background(), runtime.IdentifyRequest{ProviderTypes: []string{"probe"}, Headers: probeHeaders}, true)
			if err != nil || got["probe"].ProviderID != "X-A=1;x-a=3" {
				t.Errorf("concurrent scoped identify: %+v, %v", got, err)
			}
		})
	}
	wg.Wait()
	for range 3 {
		identifyAll(t, rev, true, "probe", "other")
		if _, err := rev.IdentifyHints(context.Background(), nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"p0", "p1"} {
		if n := calls.count(p, "describe"); n != 1 {
			t.Errorf("pack %s described %d times, want once", p, n)
		}
	}
	// The answer is the revision's, not the compiled pack's.
	rev2, again := loadProbes(t, e, runtime.Limits{}, ps...)
	identifyAll(t, rev2, true, "probe")
	if n := again.count("p0", "describe"); n != 1 {
		t.Fatalf("a new revision of the same pack described %d times, want once", n)
	}
}

// IdentifyHints answers, per type, the hint of the first pack that binds it and has
// one: p1 describes probe only, so other's hint is p2's manifest's.
func TestIdentifyHints(t *testing.T) {
	rev, _ := loadProbes(t, newEngine(t), runtime.Limits{},
		probe{settings: "describe=none", providers: `[{"type":"probe"}]`},
		probe{settings: "describe=hint:x-a hinttypes=probe", providers: `[{"type":"probe"},{"type":"other"}]`},
		probe{settings: "describe=none", providers: `[{"type":"other","identify":{"headers":["X-M"],"json_pointers":["/id"]}},{"type":"third"}]`})
	for _, tc := range []struct {
		types []string
		want  string
	}{
		{[]string{"probe", "other", "sms"}, `[{"provider_type":"probe","headers":["x-a"],"pack":"p1"},{"provider_type":"other","headers":["X-M"],"json_pointers":["/id"],"pack":"p2"}]`},
		{[]string{"third"}, `null`},
		{nil, `[{"provider_type":"probe","headers":["x-a"],"pack":"p1"},{"provider_type":"other","headers":["X-M"],"json_pointers":["/id"],"pack":"p2"}]`},
	} {
		hints, err := rev.IdentifyHints(context.Background(), tc.types)
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := json.Marshal(hints); string(b) != tc.want {
			t.Errorf("hints for %v: %s, want %s", tc.types, b, tc.want)
		}
	}
}

// A describe-identify that traps, loops, answers garbage, too much or a type the pack
// does not bind fails that pack's scoped identify only, under the probe's deadline;
// the failure is not kept, and unscoped identify never asks describe.
func TestHostileDescribe(t *testing.T) {
	e := newEngine(t)
	for _, tc := range []struct {
		mode string
		err  error
	}{
		{"trap", runtime.ErrTrap},
		{"loop", runtime.ErrTimeout},
		{"garbage", runtime.ErrInvalidOutput},
		{"huge", runtime.ErrInvalidOutput},
		{"unbound", runtime.ErrInvalidOutput},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			rev, calls := loadProbes(t, e, runtime.Limits{Timeout: time.Second},
				probe{settings: "describe=" + tc.mode}, probe{settings: "describe=none", providers: `[{"type":"probe"}]`})
			var got map[string]runtime.Identity
			err := within(t, 30*time.Second, "a hostile describe held the probe past its deadline", func() (err error) {
				got, err = rev.Identify(context.Background(), runtime.IdentifyRequest{ProviderTypes: []string{"probe", "other"}, Headers: probeHeaders}, true)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			want{outcome: "Error", pack: "p0", err: tc.err}.check(t, "other", got["other"])
			if tc.err == runtime.ErrTimeout {
				// The deadline passed in describe: the overlay had no time left.
				want{outcome: "Error", pack: "p0", err: tc.err}.check(t, "probe", got["probe"])
			} else {
				want{outcome: "Identified", pack: "p1", headers: allHeaders}.check(t, "probe", got["probe"])
			}
			if n := calls.count("p0", "identify probe") + calls.count("p0", "identify other"); n != 0 {
				t.Errorf("pack p0's identify ran %d times without a hint to scope its headers", n)
			}
			if _, err := rev.IdentifyHints(context.Background(), nil); !errors.Is(err, tc.err) {
				t.Errorf("hints: %v, want %v", err, tc.err)
			}
			if n := calls.count("p0", "describe"); n != 2 {
				t.Errorf("a failed describe ran %d times in two requests: it must not be kept", n)
			}
			got = identifyAll(t, rev, false, "other")
			want{outcome: "Identified", pack: "p0", headers: allHeaders}.check(t, "other", got["other"])
		})
	}
}

// The webhook example names its id header in the revision's config, which only its
// describe-identify can tell the host; its manifest names the default.
func TestWebhookDescribesItsHint(t *testing.T) {
	e := newEngine(t)
	configured := load(t, e, []revOpt{func(c *runtime.RevisionConfig) {
		c.Policy.Env = []string{"ID_HEADER"}
		c.Config = map[string]string{"ID_HEADER": "X-Hook-Key"}
	}}, "echo", "webhook")
	plain := load(t, e, nil, "echo", "webhook")
	req := runtime.IdentifyRequest{ProviderTypes: []string{"webhook"},
		Headers: []runtime.Header{{Name: "X-Hook-Key", Value: "k-1"}, {Name: "X-Webhook-Id", Value: "w-1"}, {Name: "X-Account", Value: "acct-9"}},
		Body:    json.RawMessage(`{"account":"from-body"}`)}
	for _, tc := range []struct {
		name   string
		rev    *runtime.Revision
		scoped bool
		want   runtime.Identity
		hint   string
	}{
		{"configured header, scoped", configured, true, runtime.Identity{Pack: "webhook", ProviderType: "webhook", ProviderID: "k-1", EndpointID: "from-body"}, "X-Hook-Key"},
		{"default header, scoped", plain, true, runtime.Identity{Pack: "webhook", ProviderType: "webhook", ProviderID: "w-1", EndpointID: "from-body"}, "X-Webhook-Id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.rev.Identify(context.Background(), req, tc.scoped)
			if err != nil {
				t.Fatal(err)
			}
			id := got["webhook"]
			id.Outcome = 0
			if id != tc.want {
				t.Fatalf("got %+v, want %+v", id, tc.want)
			}
			hints, err := tc.rev.IdentifyHints(context.Background(), []string{"webhook"})
			if err != nil || len(hints) != 1 || strings.Join(hints[0].Headers, ",") != tc.hint || hints[0].JSONPointers[0] != "/account" {
				t.Fatalf("hints %+v, %v; want %s", hints, err, tc.hint)
			}
		})
	}
}

// The single-type form: one type, or none to ask every pack whatever it binds.
func TestIdentifySingleType(t *testing.T) {
	e := newEngine(t)
	both := load(t, e, nil, "echo", "webhook")
	echoOnly := load(t, e, nil, "echo")
	headers := []runtime.Header{{Name: "X-Webhook-Id", Value: "w-1"}, {Name: "X-Account", Value: "acct-9"}}
	for _, tc := range []struct {
		name    string
		rev     *runtime.Revision
		typ     string
		headers []runtime.Header
		scoped  bool
		outcome string
		want    runtime.Identity
	}{
		{"any type: the overlay identifies after the main pack's Unsupported", both, "", headers, false, "Identified",
			runtime.Identity{Pack: "webhook", ProviderType: "webhook", ProviderID: "w-1", EndpointID: "acct-9"}},
		{"any type, scoped: only hinted headers", both, "", headers, true, "Identified",
			runtime.Identity{Pack: "webhook", ProviderType: "webhook", ProviderID: "w-1"}},
		{"NoMatch beats Unsupported", both, "", []runtime.Header{{Name: "X-Other", Value: "1"}}, false, "NoMatch", runtime.Identity{Pack: "webhook"}},
		{"no identify anywhere is Unsupported", echoOnly, "", headers, false, "Unsupported", runtime.Identity{}},
		{"unknown provider type is Unsupported", both, "sms", headers, false, "Unsupported", runtime.Identity{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.rev.Identify(context.Background(), runtime.IdentifyRequest{ProviderTypes: []string{tc.typ}, Headers: tc.headers}, tc.scoped)
			if err != nil {
				t.Fatal(err)
			}
			id := got[tc.typ]
			if id.OutcomeName() != tc.outcome {
				t.Fatalf("outcome %s, want %s (%+v)", id.OutcomeName(), tc.outcome, id)
			}
			id.Outcome = 0
			if id != tc.want {
				t.Fatalf("got %+v, want %+v", id, tc.want)
			}
		})
	}
}

// BenchmarkIdentify: one probe of two types over two packs (the main pack's NoMatch,
// then the overlay's Identified: four guest calls), scoped with the main pack's hint
// cached, and unscoped.
func BenchmarkIdentify(b *testing.B) {
	rev, _ := loadProbes(b, newEngine(b), runtime.Limits{},
		probe{settings: "identify=nomatch describe=hint:x-a"}, probe{settings: "identify=echo"})
	req := runtime.IdentifyRequest{ProviderTypes: []string{"probe", "other"}, Headers: probeHeaders}
	for _, scoped := range []bool{true, false} {
		b.Run(fmt.Sprintf("scoped=%v", scoped), func(b *testing.B) {
			cpu := processCPU()
			for b.Loop() {
				got, err := rev.Identify(context.Background(), req, scoped)
				if err != nil || got["other"].Outcome != runtime.Identified {
					b.Fatalf("%+v, %v", got, err)
				}
			}
			// CPU time, because on a shared machine the wall time mostly measures the
			// other processes.
			b.ReportMetric(float64((processCPU()-cpu).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// processCPU is the CPU time this process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// A caller that repeats one header name many times (the wrapper keeps repeats, and one
// request body holds over a hundred thousand of them; 5,000 here) costs the host in proportion to
// the headers sent, not to their square: combining the values of a name into the map a
// pack reads must not copy the growing value once per repeat, for every pack and type.
// Measured in bytes allocated, which grow with the square of the repeats when the
// combining does.
func TestIdentifyRepeatedHeaderCostsLinear(t *testing.T) {
	rev, _ := loadProbes(t, newEngine(t), runtime.Limits{Timeout: time.Minute}, probe{settings: "identify=nomatch", providers: `[{"type":"probe"}]`})
	headers := make([]runtime.Header, 5000)
	for i := range headers {
		headers[i] = runtime.Header{Name: "X-A", Value: "v"}
	}
	req := runtime.IdentifyRequest{ProviderTypes: []string{"probe"}, Headers: headers}
	if _, err := rev.Identify(context.Background(), req, false); err != nil { // the instance grows its memory once
		t.Fatal(err)
	}
	var before, after goruntime.MemStats
	goruntime.ReadMemStats(&before)
	got, err := rev.Identify(context.Background(), req, false)
	goruntime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	want{outcome: "NoMatch", pack: "p0"}.check(t, "probe", got["probe"])
	sent := int64(len(headers) * len(`{"name":"X-A","value":"v"},`))
	if alloc := int64(after.TotalAlloc - before.TotalAlloc); alloc > 64*sent {
		t.Fatalf("identify with %d repeats of one header (%d KiB) allocated %d MiB on the host", len(headers), sent>>10, alloc>>20)
	}
}

// TestDescribeHintsAreCharged: the hints a pack's describe-identify answers are kept for
// its revision's life, about ten times their JSON on the host (600 KiB for 64 KiB of
// names), so they are charged to the tenant's account and the replica's budget as its
// instances are: else a tenant's packs, in as many revisions as it likes, would make the
// host hold memory outside its share, while its idle revisions' accounts show nothing.
// Close gives the charge back, and the account goes with the revision.
func TestDescribeHintsAreCharged(t *testing.T) {
	e := newEngine(t)
	ctx := context.Background()
	names := make([]string, 3000)
	for i := range names {
		names[i] = fmt.Sprintf("h%d", i)
	}
	rev, _ := loadProbes(t, e, runtime.Limits{}, probe{settings: "describe=hint:" + strings.Join(names, "+") + " hinttypes=probe+other"})
	if h := e.MemoryStats().Host; h != 0 {
		t.Fatalf("%d bytes of host memory counted before any call", h)
	}
	hints, err := rev.IdentifyHints(ctx, nil)
	if err != nil || len(hints) != 2 || len(hints[0].Headers) != len(names) {
		t.Fatalf("hints: %d, %v", len(hints), err)
	}
	// Each kept name holds at least its text and its string header in the hint's list.
	least := int64(2 * len(names) * (16 + 4))
	if h := e.MemoryStats().Host; h < least {
		t.Fatalf("the revision keeps hints of %d names with %d bytes of host memory counted, want at least %d", 2*len(names), h, least)
	}
	rev.Close(ctx)
	if h := e.MemoryStats().Host; h != 0 {
		t.Errorf("%d bytes of host memory still counted after the revision was closed", h)
	}
	if n := e.TenantAccounts(); n != 0 {
		t.Errorf("%d tenant accounts kept after the tenant's only revision was closed", n)
	}
}

// The single-type form without a type asks every pack, whatever it binds. Scoped, a pack
// that binds no provider type has no hint at all, so, as every unhinted pack, it
// receives every header (it received none: the union of no hints).
func TestScopedIdentifyWithoutATypeGivesAnUnboundPackEveryHeader(t *testing.T) {
	rev, _ := loadProbes(t, newEngine(t), runtime.Limits{}, probe{settings: "identify=echo", providers: `[]`})
	got, err := rev.Identify(context.Background(), runtime.IdentifyRequest{ProviderTypes: []string{""}, Headers: probeHeaders}, true)
	if err != nil {
		t.Fatal(err)
	}
	want{outcome: "Identified", pack: "p0", headers: allHeaders}.check(t, "", got[""])
}
