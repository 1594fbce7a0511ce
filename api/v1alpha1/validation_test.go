package v1alpha1_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Run(m, &env)) }

const sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// object builds an unstructured object of kind from a YAML spec, the way kubectl sends a
// manifest: fields the typed structs cannot express (a missing required field, a wrong
// enum) reach the API server as written.
func object(t *testing.T, kind, spec string) *unstructured.Unstructured {
	t.Helper()
	var s map[string]any
	if err := yaml.Unmarshal([]byte(spec), &s); err != nil {
		t.Fatalf("bad test YAML: %v", err)
	}
	u := &unstructured.Unstructured{Object: map[string]any{"spec": s}}
	u.SetAPIVersion(v1.GroupVersion.String())
	u.SetKind(kind)
	u.SetGenerateName(strings.ToLower(kind) + "-")
	return u
}

type refusal struct {
	name string
	kind string
	spec string
	// want are substrings the API server's error must contain: the rule's message.
	want []string
}

const (
	revisionOK = `
tenantRef: {name: acme}
packs:
- name: bot
  url: https://example.com/bot.wasm
  sha256: ` + sha
	splitRoutes = `
tenantRef: {name: acme}
routes:
`
)

func routesN(n int) string {
	var b strings.Builder
	b.WriteString(splitRoutes)
	for i := 0; i < n; i++ {
		pct := 0
		if i == 0 {
			pct = 100
		}
		b.WriteString("- {revisionName: rev-" + string(rune('a'+i)) + ", percent: " + itoa(pct) + "}\n")
	}
	return b.String()
}

// canary is a valid two-route split with strategy.canary set to the YAML in c.
func canary(c string) string {
	return splitRoutes + "- {revisionName: a, percent: 90}\n- {revisionName: b, percent: 10}\nstrategy:\n  canary:" +
		strings.ReplaceAll(c, "\n", "\n    ")
}

// stepsN is n ascending canary steps.
func stepsN(n int) string {
	var b strings.Builder
	b.WriteString("\nsteps:")
	for i := 1; i <= n; i++ {
		b.WriteString("\n- {weight: " + itoa(i*6) + ", pause: 1m}")
	}
	return b.String()
}

func packsN(n int) string {
	var b strings.Builder
	b.WriteString("tenantRef: {name: acme}\npacks:\n")
	for i := 0; i < n; i++ {
		b.WriteString("- {name: p" + itoa(i) + ", configMapRef: {name: packs, key: p.wasm}}\n")
	}
	return b.String()
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}

var refusals = []refusal{
	// TrafficSplit
	{"split percents under 100", "TrafficSplit", splitRoutes + `
- {revisionName: a, percent: 80}
- {revisionName: b, percent: 10}`, []string{"route percents must add up to exactly 100"}},
	{"split percents over 100", "TrafficSplit", splitRoutes + `
- {revisionName: a, percent: 90}
- {revisionName: b, percent: 20}`, []string{"route percents must add up to exactly 100"}},
	{"split percent above 100", "TrafficSplit", splitRoutes + `
- {revisionName: a, percent: 101}`, []string{"spec.routes[0].percent", "less than or equal to 100"}},
	{"split percent negative", "TrafficSplit", splitRoutes + `
- {revisionName: a, percent: -10}
- {revisionName: b, percent: 110}`, []string{"spec.routes[0].percent", "greater than or equal to 0"}},
	{"split duplicate revision", "TrafficSplit", splitRoutes + `
- {revisionName: a, percent: 50}
- {revisionName: a, percent: 50}`, []string{"each revision may appear in only one route"}},
	{"split duplicate tag", "TrafficSplit", splitRoutes + `
- {revisionName: a, percent: 50, tag: canary}
- {revisionName: b, percent: 50, tag: canary}`, []string{"route tags must be unique"}},
	{"split tag uppercase", "TrafficSplit", splitRoutes + `
- {revisionName: a, percent: 100, tag: Canary}`, []string{"tag must be a DNS-1035 label"}},
	{"split tag starts with digit", "TrafficSplit", splitRoutes + `
- {revisionName: a, percent: 100, tag: 1canary}`, []string{"tag must be a DNS-1035 label"}},
	{"split tag too long", "TrafficSplit", splitRoutes + `
- {revisionName: a, percent: 100, tag: ` + strings.Repeat("a", 64) + `}`, []string{"spec.routes[0].tag", "may not be more than 63"}},
	{"split no routes", "TrafficSplit", "tenantRef: {name: acme}\nroutes: []", []string{"spec.routes", "at least 1 items"}},
	{"split 17 routes", "TrafficSplit", routesN(17), []string{"spec.routes", "at most 16 items"}},
	{"split bad stickiness", "TrafficSplit", splitRoutes + `
- {revisionName: a, percent: 100}
stickiness: cookie`, []string{"spec.stickiness", `"session", "none"`}},
	{"split no tenant", "TrafficSplit", "routes:\n- {revisionName: a, percent: 100}", []string{"spec.tenantRef", "Required value"}},

	{"canary steps descending", "TrafficSplit", canary(`
steps: [{weight: 50}, {weight: 10}]`), []string{"step weights must be strictly ascending"}},
	{"canary steps repeat a weight", "TrafficSplit", canary(`
steps: [{weight: 10}, {weight: 10}, {weight: 50}]`), []string{"step weights must be strictly ascending"}},
	{"canary step weight 0", "TrafficSplit", canary(`
steps: [{weight: 0}]`), []string{"spec.strategy.canary.steps[0].weight", "greater than or equal to 1"}},
	{"canary step weight 101", "TrafficSplit", canary(`
steps: [{weight: 101}]`), []string{"spec.strategy.canary.steps[0].weight", "less than or equal to 100"}},
	{"canary no steps", "TrafficSplit", canary(`
steps: []`), []string{"spec.strategy.canary.steps", "at least 1 items"}},
	{"canary 17 steps", "TrafficSplit", canary(stepsN(17)), []string{"spec.strategy.canary.steps", "at most 16 items"}},
	{"canary step without weight", "TrafficSplit", canary(`
steps: [{pause: 1m}]`), []string{"spec.strategy.canary.steps[0].weight", "Required value"}},
	{"canary pause negative", "TrafficSplit", canary(`
steps: [{weight: 10, pause: -1s}]`), []string{"pause must be a duration between 0s and 168h"}},
	{"canary pause over a week", "TrafficSplit", canary(`
steps: [{weight: 10, pause: 169h}]`), []string{"pause must be a duration between 0s and 168h"}},
	{"canary pause not a duration", "TrafficSplit", canary(`
steps: [{weight: 10, pause: soon}]`), []string{"spec.strategy.canary.steps[0].pause"}},
	{"canary analysis bounds nothing", "TrafficSplit", canary(`
steps: [{weight: 10}]
analysis: {interval: 1m, minActivities: 5}`), []string{"analysis needs maxErrorPercent or maxP99"}},
	{"canary analysis interval 1s", "TrafficSplit", canary(`
steps: [{weight: 10}]
analysis: {interval: 1s, maxErrorPercent: 5}`), []string{"analysis.interval must be a duration between 5s and 1h"}},
	{"canary analysis interval 2h", "TrafficSplit", canary(`
steps: [{weight: 10}]
analysis: {interval: 2h, maxErrorPercent: 5}`), []string{"analysis.interval must be a duration between 5s and 1h"}},
	{"canary error percent 101", "TrafficSplit", canary(`
steps: [{weight: 10}]
analysis: {maxErrorPercent: 101}`), []string{"spec.strategy.canary.analysis.maxErrorPercent", "less than or equal to 100"}},
	{"canary failure limit 0", "TrafficSplit", canary(`
steps: [{weight: 10}]
analysis: {maxErrorPercent: 5, failureLimit: 0}`), []string{"spec.strategy.canary.analysis.failureLimit", "greater than or equal to 1"}},
	{"canary negative min activities", "TrafficSplit", canary(`
steps: [{weight: 10}]
analysis: {maxP99: 1s, minActivities: -1}`), []string{"spec.strategy.canary.analysis.minActivities", "greater than or equal to 0"}},
	{"canary p99 not a duration", "TrafficSplit", canary(`
steps: [{weight: 10}]
analysis: {maxP99: fast}`), []string{"spec.strategy.canary.analysis.maxP99"}},

	// Revision
	{"revision pack without source", "Revision", "tenantRef: {name: acme}\npacks:\n- name: bot", []string{"a pack needs exactly one source"}},
	{"revision pack with two sources", "Revision", `
tenantRef: {name: acme}
packs:
- name: bot
  image: registry.example.com/bot:v1
  configMapRef: {name: packs, key: bot.wasm}`, []string{"a pack needs exactly one source"}},
	{"revision url not http", "Revision", `
tenantRef: {name: acme}
packs:
- name: bot
  url: ftp://example.com/bot.wasm
  sha256: ` + sha, []string{"url must be an absolute http or https URL"}},
	{"revision url relative", "Revision", `
tenantRef: {name: acme}
packs:
- name: bot
  url: /bot.wasm
  sha256: ` + sha, []string{"url must be an absolute http or https URL"}},
	{"revision url without sha256", "Revision", `
tenantRef: {name: acme}
packs:
- name: bot
  url: https://example.com/bot.wasm`, []string{"a pack with a url source needs sha256"}},
	{"revision sha256 uppercase", "Revision", `
tenantRef: {name: acme}
packs:
- name: bot
  url: https://example.com/bot.wasm
  sha256: ` + strings.ToUpper(sha), []string{"sha256 must be exactly 64 lowercase hex characters"}},
	{"revision sha256 short", "Revision", `
tenantRef: {name: acme}
packs:
- name: bot
  url: https://example.com/bot.wasm
  sha256: abc123`, []string{"sha256 must be exactly 64 lowercase hex characters"}},
	{"revision sha256 with prefix", "Revision", `
tenantRef: {name: acme}
packs:
- name: bot
  image: registry.example.com/bot:v1
  sha256: sha256:` + sha, []string{"sha256 must be exactly 64 lowercase hex characters"}},
	{"revision image with scheme", "Revision", `
tenantRef: {name: acme}
packs:
- name: bot
  image: https://registry.example.com/bot:v1`, []string{"image must be an OCI reference"}},
	{"revision duplicate pack names", "Revision", `
tenantRef: {name: acme}
packs:
- {name: bot, configMapRef: {name: packs, key: a.wasm}}
- {name: bot, configMapRef: {name: packs, key: b.wasm}}`, []string{"pack names must be unique"}},
	{"revision bad pack name", "Revision", `
tenantRef: {name: acme}
packs:
- {name: Bot_1, configMapRef: {name: packs, key: a.wasm}}`, []string{"pack name must be a DNS label"}},
	{"revision no main pack", "Revision", "tenantRef: {name: acme}\npacks: []", []string{"spec.packs", "at least 1 items"}},
	{"revision 9 overlays", "Revision", packsN(10), []string{"at most 8 overlay packs"}},
	{"revision shards 0", "Revision", revisionOK + "\nstate: {shards: 0}", []string{"spec.state.shards", "greater than or equal to 1"}},
	{"revision shards 65", "Revision", revisionOK + "\nstate: {shards: 65}", []string{"spec.state.shards", "less than or equal to 64"}},
	{"revision bad retention", "Revision", revisionOK + "\nstate: {retention: Keep}", []string{"spec.state.retention", `"Delete", "Retain"`}},
	{"revision timeout too long", "Revision", revisionOK + "\nlimits: {activityTimeout: 1h}", []string{"limits.activityTimeout must be a duration between 10ms and 5m"}},
	{"revision no tenant", "Revision", "packs:\n- {name: bot, configMapRef: {name: packs, key: a.wasm}}", []string{"spec.tenantRef", "Required value"}},

	// Tenant
	{"tenant env not a DNS label", "Tenant", "env: Prod_EU", []string{"env must be a DNS label"}},
	{"tenant memory pages 0", "Tenant", "limits: {memoryPages: 0}", []string{"spec.limits.memoryPages", "greater than or equal to 1"}},
	{"tenant memory pages above 1 GiB", "Tenant", "limits: {memoryPages: 16385}", []string{"spec.limits.memoryPages", "less than or equal to 16384"}},
	{"tenant timeout too short", "Tenant", "limits: {activityTimeout: 1ms}", []string{"limits.activityTimeout must be a duration between 10ms and 5m"}},
	{"tenant timeout too long", "Tenant", "limits: {activityTimeout: 10m}", []string{"limits.activityTimeout must be a duration between 10ms and 5m"}},
	{"tenant timeout not a duration", "Tenant", "limits: {activityTimeout: soon}", []string{"spec.limits.activityTimeout"}},
	{"tenant concurrency 0", "Tenant", "limits: {maxConcurrentActivities: 0}", []string{"spec.limits.maxConcurrentActivities", "greater than or equal to 1"}},
	{"tenant concurrency too high", "Tenant", "limits: {maxConcurrentActivities: 5000}", []string{"spec.limits.maxConcurrentActivities", "less than or equal to 1024"}},
	{"tenant body too small", "Tenant", "limits: {maxRequestBodyBytes: 10}", []string{"spec.limits.maxRequestBodyBytes", "greater than or equal to 1024"}},
	{"tenant body too large", "Tenant", "limits: {maxRequestBodyBytes: 1073741824}", []string{"spec.limits.maxRequestBodyBytes", "less than or equal to 16777216"}},
	{"tenant negative history", "Tenant", "revisionHistoryLimit: -1", []string{"spec.revisionHistoryLimit", "greater than or equal to 0"}},
	{"tenant bad wasi env name", "Tenant", "policy: {wasi: {env: [\"BAD-NAME\"]}}", []string{"spec.policy.wasi.env[0]"}},
}

func TestValidationRefusesBadManifests(t *testing.T) {
	testenv.Require(t, env)
	ns := env.Namespace(t, "validation")
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			obj := object(t, tc.kind, tc.spec)
			obj.SetNamespace(ns)
			err := env.Client.Create(context.Background(), obj)
			if err == nil {
				t.Fatalf("API server accepted a %s it must refuse:\n%s", tc.kind, tc.spec)
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("want an Invalid error, got %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
		})
	}
}

// The boundaries of each rule are accepted: the rules refuse only what they say.
func TestValidationAcceptsBoundaries(t *testing.T) {
	testenv.Require(t, env)
	ns := env.Namespace(t, "boundaries")
	accepted := []struct{ name, kind, spec string }{
		{"split single route at 100", "TrafficSplit", splitRoutes + "- {revisionName: a, percent: 100}"},
		{"split route at 0 with tag", "TrafficSplit", splitRoutes + "- {revisionName: a, percent: 100}\n- {revisionName: b, percent: 0, tag: dark-launch}"},
		{"split 16 routes", "TrafficSplit", routesN(16)},
		{"split stickiness none", "TrafficSplit", splitRoutes + "- {revisionName: a, percent: 100}\nstickiness: none"},
		{"canary steps with and without pause", "TrafficSplit", canary("\nsteps: [{weight: 10, pause: 0s}, {weight: 50}, {weight: 100, pause: 168h}]")},
		{"canary 16 steps", "TrafficSplit", canary(stepsN(16))},
		{"canary one step of 1", "TrafficSplit", canary("\nsteps: [{weight: 1}]")},
		{"canary analysis at bounds", "TrafficSplit", canary("\nsteps: [{weight: 100}]\nanalysis: {interval: 5s, minActivities: 0, maxErrorPercent: 0, maxP99: 250ms, failureLimit: 100}")},
		{"canary analysis interval 1h", "TrafficSplit", canary("\nsteps: [{weight: 10}]\nanalysis: {interval: 1h, maxErrorPercent: 100}")},
		{"revision url http", "Revision", strings.Replace(revisionOK, "https://", "http://", 1)},
		{"revision main and 8 overlays", "Revision", packsN(9)},
		{"revision image by digest", "Revision", "tenantRef: {name: acme}\npacks:\n- {name: bot, image: \"registry.example.com/packs/bot@sha256:" + sha + "\"}"},
		{"revision shards 16 retain", "Revision", revisionOK + "\nstate: {shards: 16, retention: Retain}"},
		{"tenant empty spec", "Tenant", "{}"},
		{"tenant limits at bounds", "Tenant", "limits: {memoryPages: 16384, activityTimeout: 5m, maxConcurrentActivities: 1024, maxRequestBodyBytes: 16777216}"},
	}
	for _, tc := range accepted {
		t.Run(tc.name, func(t *testing.T) {
			obj := object(t, tc.kind, tc.spec)
			obj.SetNamespace(ns)
			if err := env.Client.Create(context.Background(), obj); err != nil {
				t.Fatalf("API server refused a valid %s: %v\n%s", tc.kind, err, tc.spec)
			}
		})
	}
}

// The API server applies the defaults; the controller never writes them into spec.
func TestDefaults(t *testing.T) {
	testenv.Require(t, env)
	ctx := context.Background()
	ns := env.Namespace(t, "defaults")

	tenant := &v1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "t", Namespace: ns}}
	if err := env.Client.Create(ctx, tenant); err != nil {
		t.Fatal(err)
	}
	l, p := tenant.Spec.Limits, tenant.Spec.Policy
	if tenant.Spec.Env != "prod" || l.MemoryPages != 1024 || l.ActivityTimeout == nil || l.ActivityTimeout.Duration.String() != "10s" ||
		l.MaxConcurrentActivities != 16 || l.MaxRequestBodyBytes != 1<<20 {
		t.Errorf("tenant defaults: env=%q limits=%+v", tenant.Spec.Env, l)
	}
	if p.Secrets || p.WASI.Clocks == nil || !*p.WASI.Clocks || p.WASI.Random == nil || !*p.WASI.Random ||
		p.State.Read == nil || !*p.State.Read || p.State.Write == nil || !*p.State.Write {
		t.Errorf("tenant policy defaults: %+v", p)
	}

	// An explicit false survives defaulting (the reason these fields are pointers).
	no := false
	strict := &v1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "strict", Namespace: ns},
		Spec: v1.TenantSpec{Policy: v1.TenantPolicy{WASI: v1.WASIPolicy{Clocks: &no}, State: v1.StatePolicy{Write: &no}}}}
	if err := env.Client.Create(ctx, strict); err != nil {
		t.Fatal(err)
	}
	if *strict.Spec.Policy.WASI.Clocks || *strict.Spec.Policy.State.Write || !*strict.Spec.Policy.State.Read {
		t.Errorf("explicit false lost to defaulting: %+v", strict.Spec.Policy)
	}

	rev := &v1.Revision{ObjectMeta: metav1.ObjectMeta{Name: "r", Namespace: ns}, Spec: v1.RevisionSpec{
		TenantRef: v1.LocalObjectReference{Name: "t"},
		Packs:     []v1.Pack{{Name: "bot", ConfigMapRef: &v1.ConfigMapKeyReference{Name: "p", Key: "bot.wasm"}}},
	}}
	if err := env.Client.Create(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if rev.Spec.State.Shards != 1 || rev.Spec.State.Retention != v1.StateRetentionDelete {
		t.Errorf("revision state defaults: %+v", rev.Spec.State)
	}

	split := &v1.TrafficSplit{ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: ns}, Spec: v1.TrafficSplitSpec{
		TenantRef: v1.LocalObjectReference{Name: "t"},
		Routes:    []v1.Route{{RevisionName: "r", Percent: 100}},
	}}
	if err := env.Client.Create(ctx, split); err != nil {
		t.Fatal(err)
	}
	if split.Spec.Stickiness != v1.StickinessSession {
		t.Errorf("split stickiness default: %q", split.Spec.Stickiness)
	}

	five := int32(5)
	canary := &v1.TrafficSplit{ObjectMeta: metav1.ObjectMeta{Name: "canary", Namespace: ns}, Spec: v1.TrafficSplitSpec{
		TenantRef: v1.LocalObjectReference{Name: "t"},
		Routes:    []v1.Route{{RevisionName: "r", Percent: 100}},
		Strategy: &v1.TrafficSplitStrategy{Canary: &v1.CanaryStrategy{
			Steps:    []v1.CanaryStep{{Weight: 10}},
			Analysis: &v1.CanaryAnalysis{MaxErrorPercent: &five},
		}},
	}}
	if err := env.Client.Create(ctx, canary); err != nil {
		t.Fatal(err)
	}
	a := canary.Spec.Strategy.Canary.Analysis
	if a.Interval == nil || a.Interval.Duration.String() != "1m0s" || a.MinActivities != 10 || a.FailureLimit != 1 || a.MaxP99 != nil {
		t.Errorf("canary analysis defaults: %+v", a)
	}
	if canary.Spec.Strategy.Canary.Steps[0].Pause != nil {
		t.Errorf("an omitted pause (wait for promote) was defaulted to %v", canary.Spec.Strategy.Canary.Steps[0].Pause)
	}
}

func TestRevisionSpecIsImmutable(t *testing.T) {
	testenv.Require(t, env)
	ctx := context.Background()
	ns := env.Namespace(t, "immutable")
	rev := object(t, "Revision", revisionOK+"\nconfig: {greeting: hello}")
	rev.SetNamespace(ns)
	if err := env.Client.Create(ctx, rev); err != nil {
		t.Fatal(err)
	}
	mutations := map[string]func(spec map[string]any){
		"config": func(s map[string]any) { s["config"] = map[string]any{"greeting": "bye"} },
		"packs": func(s map[string]any) {
			s["packs"].([]any)[0].(map[string]any)["url"] = "https://example.com/other.wasm"
		},
		"shards": func(s map[string]any) { s["state"] = map[string]any{"shards": int64(4)} },
		"tenant": func(s map[string]any) { s["tenantRef"] = map[string]any{"name": "other"} },
		"overlays": func(s map[string]any) {
			s["packs"] = append(s["packs"].([]any), map[string]any{"name": "extra", "image": "r.example.com/x:v1"})
		},
	}
	for name, mutate := range mutations {
		t.Run(name, func(t *testing.T) {
			cur := &unstructured.Unstructured{}
			cur.SetGroupVersionKind(rev.GroupVersionKind())
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(rev), cur); err != nil {
				t.Fatal(err)
			}
			mutate(cur.Object["spec"].(map[string]any))
			err := env.Client.Update(ctx, cur)
			if err == nil {
				t.Fatal("API server accepted an update of a Revision's spec")
			}
			if !strings.Contains(err.Error(), "a Revision's spec is immutable") {
				t.Errorf("refusal does not say the spec is immutable: %v", err)
			}
		})
	}

	// Metadata stays editable: labels and annotations are how users organise revisions.
	cur := &v1.Revision{}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(rev), cur); err != nil {
		t.Fatal(err)
	}
	cur.Labels = map[string]string{"team": "bots"}
	if err := env.Client.Update(ctx, cur); err != nil {
		t.Errorf("label update refused: %v", err)
	}
}

func TestStatusSubresource(t *testing.T) {
	testenv.Require(t, env)
	ctx := context.Background()
	ns := env.Namespace(t, "status")
	rev := &v1.Revision{ObjectMeta: metav1.ObjectMeta{Name: "r", Namespace: ns}, Spec: v1.RevisionSpec{
		TenantRef: v1.LocalObjectReference{Name: "t"},
		Packs:     []v1.Pack{{Name: "bot", ConfigMapRef: &v1.ConfigMapKeyReference{Name: "p", Key: "bot.wasm"}}},
	}}
	if err := env.Client.Create(ctx, rev); err != nil {
		t.Fatal(err)
	}
	rev.Status.InitializeConditions(rev.Generation)
	rev.Status.MarkTrue(rev.Generation, v1.RevisionPacksFetched, v1.ReasonFetched, "")
	rev.Status.MarkTrue(rev.Generation, v1.RevisionLoaded, v1.ReasonLoaded, "")
	rev.Status.MarkTrue(rev.Generation, v1.RevisionStateReady, v1.ReasonStateReady, "")
	rev.Status.Packs = []v1.PackStatus{{Name: "bot", Digest: "sha256:" + sha, Size: 1234}}
	rev.Status.ObservedGeneration = rev.Generation
	if err := env.Client.Status().Update(ctx, rev); err != nil {
		t.Fatalf("status update: %v", err)
	}

	got := &v1.Revision{}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(rev), got); err != nil {
		t.Fatal(err)
	}
	if !got.Status.IsReady() || got.Status.Packs[0].Digest != "sha256:"+sha || got.Status.ObservedGeneration != 1 {
		t.Errorf("status not stored: %+v", got.Status)
	}
	for _, c := range got.Status.Conditions {
		if c.ObservedGeneration != 1 {
			t.Errorf("condition %s has observedGeneration %d, want 1", c.Type, c.ObservedGeneration)
		}
	}

	// Status written through the main resource is ignored: only the status subresource
	// (the controller's RBAC) may write it.
	got.Status.Phase = v1.RevisionFailed
	got.Labels = map[string]string{"touched": "yes"}
	if err := env.Client.Update(ctx, got); err != nil {
		t.Fatal(err)
	}
	again := &v1.Revision{}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(rev), again); err != nil {
		t.Fatal(err)
	}
	if again.Status.Phase != v1.RevisionReady || again.Labels["touched"] != "yes" {
		t.Errorf("main resource update changed status or lost labels: phase=%s labels=%v", again.Status.Phase, again.Labels)
	}
}

// The samples are what users copy: every one is accepted, and applying them with
// server-side apply twice leaves nothing for kubectl diff to report.
func TestSamplesApplyWithoutDrift(t *testing.T) {
	testenv.Require(t, env)
	kubectl := testenv.Kubectl()
	if _, err := os.Stat(kubectl); err != nil {
		t.Fatalf("kubectl not built: run make envtest: %v", err)
	}
	kubeconfig, err := env.KubeconfigFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ns := env.Namespace(t, "samples")
	samples := filepath.Join(testenv.RepoRoot(), "config", "samples")
	run := func(args ...string) (string, error) {
		cmd := exec.Command(kubectl, append([]string{"--kubeconfig", kubeconfig, "-n", ns}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for i := 0; i < 2; i++ {
		if out, err := run("apply", "--server-side", "--field-manager=packhost-test", "-f", samples); err != nil {
			t.Fatalf("apply #%d: %v\n%s", i+1, err, out)
		}
	}
	out, err := run("diff", "--server-side", "--field-manager=packhost-test", "-f", samples)
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) && exit.ExitCode() == 1 {
			t.Fatalf("kubectl diff reports drift after apply:\n%s", out)
		}
		t.Fatalf("kubectl diff: %v\n%s", err, out)
	}

	// Everything in the directory landed: one Tenant, two Revisions, one 90/10 split.
	ctx := context.Background()
	var tenants v1.TenantList
	var revs v1.RevisionList
	var splits v1.TrafficSplitList
	for _, l := range []client.ObjectList{&tenants, &revs, &splits} {
		if err := env.Client.List(ctx, l, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
	}
	if len(tenants.Items) != 1 || len(revs.Items) != 2 || len(splits.Items) != 1 {
		t.Fatalf("samples created %d tenants, %d revisions, %d splits; want 1, 2, 1", len(tenants.Items), len(revs.Items), len(splits.Items))
	}
	routes := splits.Items[0].Spec.Routes
	if len(routes) != 2 || routes[0].Percent != 90 || routes[1].Percent != 10 {
		t.Errorf("sample split is not 90/10: %+v", routes)
	}

	// The printer columns work against the real server: kubectl get by category and short name.
	for _, what := range []string{"packhost", "phrev", "phsplit", "phtenant"} {
		if out, err := run("get", what); err != nil {
			t.Errorf("kubectl get %s: %v\n%s", what, err, out)
		}
	}
	out, _ = run("get", "phrev", "-o", "wide")
	for _, col := range []string{"TENANT", "PHASE", "READY", "DIGEST", "AGE"} {
		if !strings.Contains(out, col) {
			t.Errorf("kubectl get phrev lacks column %s:\n%s", col, out)
		}
	}
}
