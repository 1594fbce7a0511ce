package runtime_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/runtime"
	"github.com/tetratelabs/wazero/api"
)

func pack(t testing.TB, name string) []byte {
	t.Helper()
	b, err := packs.Build(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// cacheDir is a compilation cache shared by the tests of this binary, so each pack is
// compiled once per run rather than once per test.
var cacheDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "packhost-runtime-test-")
	if err != nil {
		panic(err)
	}
	cacheDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func newEngine(t testing.TB) *runtime.Engine {
	t.Helper()
	e, err := runtime.NewEngine(context.Background(), runtime.EngineConfig{Logger: logr.Discard(), CacheDir: cacheDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close(context.Background()) })
	return e
}

var allowAll = runtime.Policy{StateRead: true, StateWrite: true, Clocks: true, Random: true}

type revOpt func(*runtime.RevisionConfig)

func load(t testing.TB, e *runtime.Engine, opts []revOpt, names ...string) *runtime.Revision {
	t.Helper()
	rev, err := tryLoad(e, opts, names...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rev.Close(context.Background()) })
	return rev
}

func tryLoad(e *runtime.Engine, opts []revOpt, names ...string) (*runtime.Revision, error) {
	ctx := context.Background()
	cfg := runtime.RevisionConfig{Name: "ns/rev", Env: "prod", Tenant: "acme", Policy: allowAll, Logger: logr.Discard()}
	for _, name := range names {
		b, err := packs.Build(name)
		if err != nil {
			return nil, err
		}
		p, err := e.Compile(ctx, b)
		if err != nil {
			for _, q := range cfg.Packs {
				e.Release(ctx, q)
			}
			return nil, err
		}
		cfg.Packs = append(cfg.Packs, p)
	}
	for _, o := range opts {
		o(&cfg)
	}
	return e.NewRevision(ctx, cfg)
}

func msg(payload string) *runtime.Activity {
	return &runtime.Activity{Kind: runtime.KindMessage, Payload: json.RawMessage(payload)}
}

func userMsg(user, payload string) *runtime.Activity {
	a := msg(payload)
	a.UserID = user
	return a
}

func TestHandleEcho(t *testing.T) {
	for _, name := range []string{"echo", "rawecho"} {
		t.Run(name, func(t *testing.T) {
			rev := load(t, newEngine(t), nil, name)
			out, err := rev.Handle(context.Background(), msg(`{"text":"hi","n":[1,2,3]}`))
			if err != nil {
				t.Fatal(err)
			}
			if len(out) != 1 || out[0].Kind != runtime.KindCustom || out[0].Action != runtime.ActionResponse || string(out[0].Payload) != `{"text":"hi","n":[1,2,3]}` {
				t.Fatalf("echo replied %+v", out)
			}
		})
	}
}

func TestCounterKeepsStateAndDiscardsFailedWrites(t *testing.T) {
	store := runtime.NewMemStore()
	rev := load(t, newEngine(t), []revOpt{func(c *runtime.RevisionConfig) { c.Store = store }}, "counter")
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		out, err := rev.Handle(ctx, msg(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		if want := `{"count":` + string(rune('0'+i)) + `}`; string(out[0].Payload) != want {
			t.Fatalf("activity %d replied %s, want %s", i, out[0].Payload, want)
		}
	}
	fail := &runtime.Activity{Kind: runtime.KindCustom, Action: "fail-after-write"}
	if _, err := rev.Handle(ctx, fail); !errors.Is(err, runtime.ErrInvalidOutput) {
		t.Fatalf("failing handler: got %v, want ErrInvalidOutput", err)
	}
	if v, _ := store.Value(runtime.StateKey{Pack: "counter", Name: "count"}); string(v) != "3" {
		t.Fatalf("a failed activity's write was kept: count=%s", v)
	}
}

// Two revisions on one engine share the compiled pack but never each other's state.
func TestRevisionsDoNotShareState(t *testing.T) {
	e := newEngine(t)
	a, b := runtime.NewMemStore(), runtime.NewMemStore()
	revA := load(t, e, []revOpt{func(c *runtime.RevisionConfig) { c.Store = a }}, "counter")
	revB := load(t, e, []revOpt{func(c *runtime.RevisionConfig) { c.Store = b }}, "counter")
	if e.Packs() != 1 {
		t.Errorf("engine holds %d compiled packs for one digest, want 1", e.Packs())
	}
	ctx := context.Background()
	for range 2 {
		if _, err := revA.Handle(ctx, msg(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	out, err := revB.Handle(ctx, msg(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	if string(out[0].Payload) != `{"count":1}` {
		t.Fatalf("revision B saw revision A's state: %s", out[0].Payload)
	}
}

func TestSurveyParksAndResumes(t *testing.T) {
	store := runtime.NewMemStore()
	now := time.Unix(1_800_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	rev := load(t, newEngine(t), []revOpt{func(c *runtime.RevisionConfig) { c.Store, c.Clock = store, clock }}, "survey")
	ctx := context.Background()
	say := func(user, payload string) string {
		t.Helper()
		out, err := rev.Handle(ctx, userMsg(user, payload))
		if err != nil {
			t.Fatal(err)
		}
		return string(out[0].Payload)
	}
	if got := say("ann", `{"hi":1}`); !strings.Contains(got, `"step":1`) {
		t.Fatalf("first turn: %s", got)
	}
	// Another user's session is independent.
	if got := say("bob", `{}`); !strings.Contains(got, `"step":1`) {
		t.Fatalf("bob's first turn: %s", got)
	}
	say("ann", `"Ann"`)
	if got := say("ann", `"operators"`); !strings.Contains(got, `"step":3`) {
		t.Fatalf("third turn: %s", got)
	}
	got := say("ann", `"ann@example.com"`)
	if got != `{"done":true,"answers":["Ann","operators","ann@example.com"]}` {
		t.Fatalf("final turn: %s", got)
	}
	if store.Waits() != 1 { // bob's
		t.Fatalf("a completed turn left its wait: %d waits", store.Waits())
	}

	// Bob's wait expires after its TTL (30 minutes by default): he starts over.
	mu.Lock()
	now = now.Add(31 * time.Minute)
	mu.Unlock()
	if got := say("bob", `"Bob"`); !strings.Contains(got, `"step":1`) {
		t.Fatalf("an expired wait was resumed: %s", got)
	}
}

// A wait is consumed once: two activities racing to resume it cannot both see it.
func TestWaitConsumedOnce(t *testing.T) {
	store := runtime.NewMemStore()
	rev := load(t, newEngine(t), []revOpt{func(c *runtime.RevisionConfig) { c.Store = store }}, "survey")
	ctx := context.Background()
	if _, err := rev.Handle(ctx, userMsg("ann", `{}`)); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	results := make([]string, 8)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := rev.Handle(ctx, userMsg("ann", `"x"`))
			if err != nil {
				results[i] = "error: " + err.Error()
				return
			}
			results[i] = string(out[0].Payload)
		}()
	}
	wg.Wait()
	steps := map[string]int{}
	for _, r := range results {
		for _, s := range []string{`"step":1`, `"step":2`, `"step":3`, `"done"`} {
			if strings.Contains(r, s) {
				steps[s]++
			}
		}
	}
	// The racing activities serialise on the session's wait: 8 turns after the first
	// walk the survey exactly twice (2, 3, done, 1, 2, 3, done, 1). A wait consumed twice
	// would repeat a step and skip another.
	for s, n := range map[string]int{`"step":1`: 2, `"step":2`: 2, `"step":3`: 2, `"done"`: 2} {
		if steps[s] != n {
			t.Fatalf("the wait was not consumed exactly once per turn: %v\n%v", steps, results)
		}
	}
}

func TestHostilePacks(t *testing.T) {
	ctx := context.Background()
	limits := func(c *runtime.RevisionConfig) {
		c.Limits = runtime.Limits{Timeout: 300 * time.Millisecond, MemoryPages: 1024}
		if c.Packs[0].Manifest.PackID == "grow" {
			// Enough time to hit the memory cap: the trap, not the deadline, stops it.
			c.Limits = runtime.Limits{Timeout: 10 * time.Second, MemoryPages: 512}
		}
	}
	cases := []struct {
		pack    string
		payload string
		want    error
	}{
		{"hostile/trap", `{}`, runtime.ErrTrap},
		{"hostile/loop", `{}`, runtime.ErrTimeout},
		{"hostile/grow", `{}`, runtime.ErrTrap},
		{"hostile/oob", `{"attack":"output"}`, runtime.ErrInvalidOutput},
		{"hostile/oob", `{"attack":"state-key"}`, runtime.ErrInvalidOutput},
		{"hostile/oob", `{"attack":"state-value"}`, runtime.ErrInvalidOutput},
		{"hostile/oob", `{"attack":"state-buffer"}`, runtime.ErrInvalidOutput},
		{"hostile/oob", `{"attack":"huge-length"}`, runtime.ErrInvalidOutput},
	}
	e := newEngine(t)
	for _, tc := range cases {
		t.Run(tc.pack+tc.payload, func(t *testing.T) {
			store := runtime.NewMemStore()
			rev := load(t, e, []revOpt{limits, func(c *runtime.RevisionConfig) { c.Store = store }}, tc.pack)
			start := time.Now()
			_, err := rev.Handle(ctx, msg(tc.payload))
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if tc.want == runtime.ErrTimeout && time.Since(start) > 5*time.Second {
				t.Errorf("the deadline of 300ms stopped the loop only after %v", time.Since(start))
			}
			if store.Commits != 0 {
				t.Errorf("a failed activity committed state")
			}
			// The revision keeps serving.
			out, err := rev.Handle(ctx, msg(`{"ok":true}`))
			if err != nil || string(out[0].Payload) != `{"ok":true}` {
				t.Fatalf("revision stopped serving after %v: %v %v", tc.want, out, err)
			}
		})
	}
}

func TestOverloaded(t *testing.T) {
	rev := load(t, newEngine(t), []revOpt{func(c *runtime.RevisionConfig) {
		c.Limits = runtime.Limits{Timeout: 2 * time.Second, MaxConcurrency: 1, MaxQueue: 1}
	}}, "hostile/loop")
	ctx := context.Background()
	errs := make(chan error, 2)
	go func() { _, err := rev.Handle(ctx, msg(`{}`)); errs <- err }()
	waitForLoad(t, rev, 1, 0) // one runs
	go func() { _, err := rev.Handle(ctx, msg(`{}`)); errs <- err }()
	waitForLoad(t, rev, 1, 1) // one waits
	if _, err := rev.Handle(ctx, msg(`{"ok":true}`)); !errors.Is(err, runtime.ErrOverloaded) {
		t.Fatalf("third activity: got %v, want ErrOverloaded", err)
	}
	for range 2 {
		if err := <-errs; !errors.Is(err, runtime.ErrTimeout) {
			t.Errorf("looping activity: got %v, want ErrTimeout", err)
		}
	}
}

func TestLoadRefusesBadPacks(t *testing.T) {
	e := newEngine(t)
	ctx := context.Background()
	echo := pack(t, "echo")
	counter := pack(t, "counter")
	cases := []struct {
		name   string
		module []byte
		want   string
	}{
		{"not wasm", []byte("hello"), "not a WebAssembly"},
		{"no manifest", packs.WithManifest(echo, "")[:len(echo)-0], ""},
		{"invalid manifest JSON", packs.WithManifest(echo, `{"abi":1,`), "decode manifest"},
		{"unknown abi", packs.WithManifest(echo, `{"abi":2,"pack_id":"echo","flows":[{"id":"f","entry":true}]}`), "abi 2 is not supported"},
		{"unknown field", packs.WithManifest(echo, `{"abi":1,"pack_id":"echo","flows":[{"id":"f"}],"capabilitys":{}}`), "unknown field"},
		{"no flows", packs.WithManifest(echo, `{"abi":1,"pack_id":"echo","flows":[]}`), "no flows"},
		{"undeclared import", packs.WithManifest(counter, `{"abi":1,"pack_id":"counter","flows":[{"id":"f","entry":true}]}`), "packhost.state_get but its manifest does not declare"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "no manifest" {
				tc.module = stripAll(echo)
				tc.want = "no packhost.manifest custom section"
			}
			_, err := e.Compile(ctx, tc.module)
			if !errors.Is(err, runtime.ErrInvalidPack) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrInvalidPack saying %q", err, tc.want)
			}
		})
	}
	if e.Packs() != 0 {
		t.Errorf("refused packs left %d compiled modules", e.Packs())
	}
}

func stripAll(p []byte) []byte {
	// WithManifest with an empty manifest appends an empty section; strip it again.
	b := packs.WithManifest(p, "x")
	return b[:len(b)-len("x")-len(runtime.ManifestSection)-3]
}

func TestCapabilitiesNeedTenantPolicy(t *testing.T) {
	e := newEngine(t)
	_, err := tryLoad(e, []revOpt{func(c *runtime.RevisionConfig) { c.Policy = runtime.Policy{StateRead: true} }}, "counter")
	var pe *runtime.PackError
	if !errors.Is(err, runtime.ErrCapabilityDenied) || !errors.As(err, &pe) || pe.Pack != "counter" {
		t.Fatalf("got %v, want ErrCapabilityDenied naming pack counter", err)
	}
	if e.Packs() != 0 {
		t.Errorf("a refused revision kept %d compiled packs", e.Packs())
	}
}

func TestDuplicatePackIDsRefused(t *testing.T) {
	_, err := tryLoad(newEngine(t), nil, "echo", "echo")
	if !errors.Is(err, runtime.ErrInvalidPack) || !strings.Contains(err.Error(), "appears twice") {
		t.Fatalf("got %v", err)
	}
}

func TestCompileOncePerDigest(t *testing.T) {
	e := newEngine(t)
	ctx := context.Background()
	echo := pack(t, "echo")
	var wg sync.WaitGroup
	got := make([]*runtime.Pack, 4)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := e.Compile(ctx, echo)
			if err != nil {
				t.Error(err)
			}
			got[i] = p
		}()
	}
	wg.Wait()
	for _, p := range got[1:] {
		if p != got[0] {
			t.Fatal("concurrent compiles of one digest produced different packs")
		}
	}
	if e.Packs() != 1 {
		t.Fatalf("%d packs", e.Packs())
	}
	for _, p := range got {
		e.Release(ctx, p)
	}
	if e.Packs() != 0 {
		t.Fatalf("released packs still held: %d", e.Packs())
	}
}

func TestUnloadFreesEverything(t *testing.T) {
	e := newEngine(t)
	rev, err := tryLoad(e, nil, "echo")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := rev.Handle(ctx, msg(`1`)); err != nil {
		t.Fatal(err)
	}
	rev.Close(ctx)
	if _, err := rev.Handle(ctx, msg(`1`)); !errors.Is(err, runtime.ErrNotLoaded) {
		t.Fatalf("after unload: %v", err)
	}
	if e.Packs() != 0 || rev.Instances()["echo"] != 0 {
		t.Fatalf("unload left %d packs, %d instances", e.Packs(), rev.Instances()["echo"])
	}
}

// TestTenantAccountsAreForgotten: a tenant's memory and processor account goes with its
// last revision, loaded or failed, so tenants that come and go leave nothing behind.
func TestTenantAccountsAreForgotten(t *testing.T) {
	e := newEngine(t)
	ctx := context.Background()
	for i := range 20 {
		rev, err := tryLoad(e, []revOpt{func(c *runtime.RevisionConfig) { c.Name, c.Tenant = fmt.Sprintf("ns-%d/rev", i), "t" }}, "echo")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rev.Handle(ctx, msg(`1`)); err != nil {
			t.Fatal(err)
		}
		rev.Close(ctx)
	}
	if _, err := tryLoad(e, []revOpt{func(c *runtime.RevisionConfig) {
		c.Name, c.Tenant, c.Limits = "failed/rev", "t", runtime.Limits{MemoryPages: 1}
	}}, "echo"); !errors.Is(err, runtime.ErrMemoryLimit) {
		t.Fatalf("a revision whose pack needs more pages than it allows: %v, want ErrMemoryLimit", err)
	}
	if n := e.TenantAccounts(); n != 0 {
		t.Fatalf("%d tenant accounts kept after every revision was closed or failed", n)
	}
	load(t, e, []revOpt{func(c *runtime.RevisionConfig) { c.Name, c.Tenant = "kept/a", "t" }}, "echo")
	other := load(t, e, []revOpt{func(c *runtime.RevisionConfig) { c.Name, c.Tenant = "kept/b", "t" }}, "echo")
	other.Close(ctx)
	if n := e.TenantAccounts(); n != 1 {
		t.Fatalf("%d tenant accounts with one revision of one tenant loaded, want 1", n)
	}
}

// TestIdlePoolShrinksToNone: instances idle for IdleTimeout are closed, down to none (an
// idle revision costs its bookkeeping only), and the next activity starts one on demand.
func TestIdlePoolShrinksToNone(t *testing.T) {
	rev := load(t, newEngine(t), []revOpt{func(c *runtime.RevisionConfig) {
		c.Limits = runtime.Limits{IdleTimeout: 100 * time.Millisecond, Timeout: 5 * time.Second}
	}}, "echo")
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = rev.Handle(context.Background(), msg(`1`)) }()
	}
	wg.Wait()
	grown := rev.Instances()["echo"]
	deadline := time.Now().Add(5 * time.Second)
	for rev.Instances()["echo"] > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := rev.Instances()["echo"]; n != 0 {
		t.Fatalf("idle pool kept %d instances (grew to %d) after 5 s, want none", n, grown)
	}
	if out, err := rev.Handle(context.Background(), msg(`2`)); err != nil || len(out) != 1 {
		t.Fatalf("the first activity after the pool emptied: %v %v", out, err)
	}
	if n := rev.Instances()["echo"]; n != 1 {
		t.Fatalf("after one activity on an empty pool: %d instances, want 1", n)
	}
}

func TestCompilationCacheSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	echo := pack(t, "echo")
	for i := 0; i < 2; i++ {
		e, err := runtime.NewEngine(ctx, runtime.EngineConfig{CacheDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		p, err := e.Compile(ctx, echo)
		if err != nil {
			t.Fatal(err)
		}
		e.Release(ctx, p)
		_ = e.Close(ctx)
		entries, _ := os.ReadDir(dir)
		if len(entries) == 0 {
			t.Fatalf("restart %d: the compilation cache directory is empty", i)
		}
	}
}

func TestParseActivity(t *testing.T) {
	cases := []struct {
		in, err string
	}{
		{`{"kind":"message","payload":{"a":1}}`, ""},
		{`{"kind":"custom","action":"ping"}`, ""},
		{`{"kind":"custom"}`, "needs an action"},
		{`{"kind":"smoke"}`, "not message or custom"},
		{`{"kind":"message","tenant":"other"}`, "unknown field"},
		{`{"kind":"message"} {}`, "trailing data"},
		{`{"kind":"message","user_id":"` + strings.Repeat("u", 300) + `"}`, "longer than"},
		{`not json`, "invalid character"},
	}
	for _, tc := range cases {
		_, err := runtime.ParseActivity([]byte(tc.in))
		if tc.err == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.in, err)
			}
			continue
		}
		if !errors.Is(err, runtime.ErrInvalidActivity) || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: got %v, want ErrInvalidActivity saying %q", tc.in, err, tc.err)
		}
	}
}

func TestSessionKey(t *testing.T) {
	a := &runtime.Activity{Kind: "message", UserID: "ann", ChannelID: "web"}
	k1 := runtime.SessionKey("prod", "acme", a)
	if k1 != runtime.SessionKey("prod", "acme", a) || k1 == "" {
		t.Fatal("session key is not stable")
	}
	if k1 == runtime.SessionKey("staging", "acme", a) || k1 == runtime.SessionKey("prod", "other", a) {
		t.Fatal("env and tenant do not scope the session key")
	}
	// The key remembered for one env and tenant is never handed out for another.
	if runtime.SessionKey("prod", "acme", a) != k1 || runtime.SessionKey("prod", "acme", &runtime.Activity{Kind: "message", UserID: "ann", ChannelID: "web"}) != k1 {
		t.Fatal("the session key changed after it was derived for another env and tenant")
	}
	if got := runtime.SessionKey("staging", "acme", a); got == k1 || got != runtime.SessionKey("staging", "acme", &runtime.Activity{Kind: "message", UserID: "ann", ChannelID: "web"}) {
		t.Fatalf("staging key %q: remembered from prod, or not the key a fresh activity gets", got)
	}
	// A hint cannot forge a boundary.
	b := &runtime.Activity{Kind: "message", UserID: "ann/x", ChannelID: "web"}
	c := &runtime.Activity{Kind: "message", UserID: "x", ChannelID: "web/ann"}
	if runtime.SessionKey("prod", "acme", b) == runtime.SessionKey("prod", "acme", c) {
		t.Fatal("separator injection collides two session keys")
	}
	if runtime.SessionKey("prod", "acme", &runtime.Activity{Kind: "message"}) != "" {
		t.Fatal("an anonymous activity got a session key")
	}
}

func TestOutputLimit(t *testing.T) {
	rev := load(t, newEngine(t), []revOpt{func(c *runtime.RevisionConfig) { c.Limits.MaxOutputBytes = 100 }}, "echo")
	ctx := context.Background()
	if _, err := rev.Handle(ctx, msg(`"`+strings.Repeat("x", 200)+`"`)); !errors.Is(err, runtime.ErrInvalidOutput) {
		t.Fatalf("200-byte output under a 100-byte limit: %v", err)
	}
	if out, err := rev.Handle(ctx, msg(`"short"`)); err != nil || string(out[0].Payload) != `"short"` {
		t.Fatalf("small output: %v %v", out, err)
	}
}

// A memory limit below what a pack needs to start fails the revision with a typed error
// that names both figures; it never reaches wazero (which would panic).
func TestMemoryLimitBelowThePacksNeeds(t *testing.T) {
	e := newEngine(t)
	_, err := tryLoad(e, []revOpt{func(c *runtime.RevisionConfig) { c.Limits.MemoryPages = 16 }}, "echo")
	var pe *runtime.PackError
	if !errors.Is(err, runtime.ErrMemoryLimit) || !errors.As(err, &pe) || pe.Pack != "echo" || !strings.Contains(err.Error(), "allows 16") {
		t.Fatalf("got %v, want ErrMemoryLimit naming the pack and the limit", err)
	}
	if e.Packs() != 0 {
		t.Errorf("a refused revision kept %d compiled packs", e.Packs())
	}
}

// Code compiled without the deadline guard, cached in a directory, is never what a guarded
// engine on the same directory runs (wazero puts the guard in the module's cache key; an
// upgrade that stopped doing so would let a cached pack escape every deadline).
func TestCacheKeepsUnguardedCodeFromGuardedEngines(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, err := packs.Build("hostile/loop")
	if err != nil {
		t.Fatal(err)
	}
	unguarded, err := runtime.NewEngine(ctx, runtime.EngineConfig{Logger: logr.Discard(), CacheDir: dir, Unguarded: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unguarded.Compile(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := unguarded.Close(ctx); err != nil {
		t.Fatal(err)
	}
	guarded, err := runtime.NewEngine(ctx, runtime.EngineConfig{Logger: logr.Discard(), CacheDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = guarded.Close(ctx) })
	rev := load(t, guarded, []revOpt{func(c *runtime.RevisionConfig) {
		c.Limits = runtime.Limits{Timeout: 200 * time.Millisecond}
	}}, "hostile/loop")
	// Without the checks the guest spins on; nothing can stop it in this process.
	err = within(t, 20*time.Second, "the deadline did not stop a looping guest: the guarded engine ran code compiled unguarded", func() error {
		_, err := rev.Handle(ctx, msg(`{}`))
		return err
	})
	if !errors.Is(err, runtime.ErrTimeout) {
		t.Fatalf("looping activity: got %v, want ErrTimeout", err)
	}
}

// within returns what f returns, failing the test with stuck if f has not returned after d.
// waitForLoad waits until rev has running activities running and waiting waiting.
func waitForLoad(t *testing.T, rev *runtime.Revision, running, waiting int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if r, w := rev.Load(); r == running && w == waiting {
			return
		}
		time.Sleep(time.Millisecond)
	}
	r, w := rev.Load()
	t.Fatalf("revision has %d running and %d waiting, want %d and %d", r, w, running, waiting)
}

func within(t *testing.T, d time.Duration, stuck string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatal(stuck)
		return nil
	}
}

// An activity waiting for an instance when its revision is unloaded is told so at once,
// not left to wait out its deadline.
func TestUnloadEndsWaitingActivities(t *testing.T) {
	rev, err := tryLoad(newEngine(t), []revOpt{func(c *runtime.RevisionConfig) {
		c.Limits = runtime.Limits{Timeout: 3 * time.Second, MaxConcurrency: 1, MaxQueue: 1}
	}}, "hostile/loop")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	running, waiting := make(chan error, 1), make(chan error, 1)
	go func() { _, err := rev.Handle(ctx, msg(`{}`)); running <- err }()
	waitForLoad(t, rev, 1, 0)
	start := time.Now()
	go func() { _, err := rev.Handle(ctx, msg(`{}`)); waiting <- err }()
	waitForLoad(t, rev, 1, 1)
	closed := make(chan struct{})
	go func() { rev.Close(ctx); close(closed) }()
	if err := <-waiting; !errors.Is(err, runtime.ErrNotLoaded) {
		t.Errorf("the waiting activity got %v after %v, want ErrNotLoaded", err, time.Since(start).Round(time.Millisecond))
	}
	if err := <-running; !errors.Is(err, runtime.ErrTimeout) {
		t.Errorf("the running activity got %v, want ErrTimeout", err)
	}
	<-closed
}

// Close with a context that is already done does not wait for running activities; an
// instance that one of them hands back afterwards is closed, not pooled in a revision
// nothing will close again.
func TestInstanceReturnedAfterUnloadIsClosed(t *testing.T) {
	rev, err := tryLoad(newEngine(t), nil, "echo")
	if err != nil {
		t.Fatal(err)
	}
	done, cancel := context.WithCancel(context.Background())
	cancel()
	closeOnce := sync.Once{}
	runtime.OnInstanceTaken(t, func(api.Module) { closeOnce.Do(func() { rev.Close(done) }) })
	if _, err := rev.Handle(context.Background(), msg(`{"n":1}`)); err != nil {
		t.Fatalf("the activity running through the unload: %v", err)
	}
	if n := rev.Instances()["echo"]; n != 0 {
		t.Fatalf("%d instances left after unload", n)
	}
}

// stalledRerun holds the second transaction an activity begins (its run after the
// first commit conflicted, see conflictOnce) until release is closed; stalled is
// closed when it starts holding it.
type stalledRerun struct {
	runtime.Store
	begun            atomic.Int32
	stalled, release chan struct{}
}

func (s *stalledRerun) Begin(ctx context.Context) (runtime.Txn, error) {
	if s.begun.Add(1) == 2 {
		close(s.stalled)
		<-s.release
	}
	return s.Store.Begin(ctx)
}

// TestUnloadedRevisionRunsNoGuestAgain: an activity still running when its revision is
// unloaded (abandoned after the close grace) may finish, but it does not run the guest
// again on a conflict: that would start an instance of an unloaded revision, charged to
// a tenant account the unload already forgot, beside the account a newer revision of
// the tenant now has (the tenant then holds two shares of the budget and processors).
func TestUnloadedRevisionRunsNoGuestAgain(t *testing.T) {
	e := newEngine(t)
	ctx := context.Background()
	stall := &stalledRerun{Store: runtime.NewMemStore(), stalled: make(chan struct{}), release: make(chan struct{})}
	rev, err := tryLoad(e, []revOpt{func(c *runtime.RevisionConfig) { c.Store, c.Limits.Timeout = &conflictOnce{Store: stall}, time.Minute }}, "echo")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := rev.Handle(ctx, msg(`1`)); done <- err }()
	<-stall.stalled
	rev.Close(ctx) // gives up on the activity after the grace
	load(t, e, []revOpt{func(c *runtime.RevisionConfig) { c.Name = "ns/next" }}, "echo")
	close(stall.release)
	if err := <-done; !errors.Is(err, runtime.ErrNotLoaded) {
		t.Fatalf("an activity re-run after its revision was unloaded: %v, want ErrNotLoaded", err)
	}
}
