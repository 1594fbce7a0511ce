package dispatcher

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/runtime"
)

// revisions serves named runtimes of tenant acme; "other/<name>" belongs to tenant other.
type revisions map[string]*runtime.Revision

func (r revisions) Revision(_, tenant, name string) *runtime.Revision {
	if tenant != "acme" {
		return r["other/"+name]
	}
	return r[name]
}

func loadRevision(t *testing.T, e *runtime.Engine, name, pack string, store runtime.Store, limits runtime.Limits) *runtime.Revision {
	t.Helper()
	rev, err := packs.Revision(context.Background(), e, runtime.RevisionConfig{Name: "default/" + name, Env: "prod", Tenant: "default/acme",
		Store: store, Limits: limits, Logger: logr.Discard(), Policy: runtime.Policy{StateRead: true, StateWrite: true}}, pack)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rev.Close(context.Background()) })
	return rev
}

func TestErrorsAreTypedAndChangeNothing(t *testing.T) {
	e := newEngine(t)
	store := runtime.NewMemStore()
	short := runtime.Limits{Timeout: 300 * time.Millisecond}
	revs := revisions{
		"counter": loadRevision(t, e, "counter", "counter", store, runtime.Limits{}),
		"trap":    loadRevision(t, e, "trap", "hostile/trap", runtime.NewMemStore(), short),
		"loop":    loadRevision(t, e, "loop", "hostile/loop", runtime.NewMemStore(), short),
	}
	// A revision of another tenant in the same namespace: acme's callers never reach it.
	revs["other/foreign"] = revs["counter"]
	router := NewRouter()
	router.PublishTenant("default", "acme", &TenantConfig{Namespace: "default", Name: "acme", Env: "prod",
		Tokens: map[string]string{"tok": "app", "ops-tok": "ops"}, RoutingCallers: []string{"ops"}, MaxBodyBytes: 2048})
	router.PublishTable("default", "acme", NewTable("s", []Route{
		{Revision: "counter", Percent: 100, Tag: "stable"}, {Revision: "trap", Percent: 0, Tag: "trap"},
		{Revision: "loop", Percent: 0, Tag: "loop"}, {Revision: "gone", Percent: 0, Tag: "gone"}}, true))
	router.PublishTenant("default", "nosplit", &TenantConfig{Namespace: "default", Name: "nosplit", Tokens: map[string]string{"tok": "app"}})
	router.Analyze("default", "acme", time.Hour, time.Now())
	reg := prometheus.NewRegistry()
	s := &Server{Router: router, Revisions: revs, Metrics: NewMetrics(reg), Log: logr.Discard()}
	h := s.Handler()

	do := func(path, token, body string, hdr ...string) (*httptest.ResponseRecorder, errorBody) {
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		var eb errorBody
		_ = json.Unmarshal(w.Body.Bytes(), &eb)
		return w, eb
	}
	const acme = "/v1/namespaces/default/tenants/acme"
	ok := `{"kind":"message","user_id":"ann"}`
	cases := []struct {
		name, path, token, body string
		hdr                     []string
		status                  int
		code                    string
	}{
		{"invalid JSON", acme + "/activities", "tok", `{"kind":`, nil, 400, CodeInvalidActivity},
		{"invalid activity", acme + "/activities", "tok", `{"kind":"smoke"}`, nil, 400, CodeInvalidActivity},
		{"unknown field", acme + "/activities", "tok", `{"kind":"message","tenant":"other"}`, nil, 400, CodeInvalidActivity},
		{"invalid UTF-8 in the payload", acme + "/activities", "tok", "{\"kind\":\"message\",\"payload\":\"caf\xe9\"}", nil, 400, CodeInvalidActivity},
		{"invalid UTF-8 in a hint", acme + "/activities", "tok", "{\"kind\":\"message\",\"user_id\":\"\xff\"}", nil, 400, CodeInvalidActivity},
		{"encoded surrogate in a hint", acme + "/activities", "tok", "{\"kind\":\"message\",\"user_id\":\"\xed\xa0\x80\"}", nil, 400, CodeInvalidActivity},
		{"invalid UTF-8 in a key", acme + "/activities", "tok", "{\"kind\":\"message\",\"\xc3\":1}", nil, 400, CodeInvalidActivity},
		{"no token", acme + "/activities", "", ok, nil, 401, CodeUnauthenticated},
		{"wrong token", acme + "/activities", "nope", ok, nil, 401, CodeUnauthenticated},
		{"choosing without the right", acme + "/tags/stable/activities", "tok", ok, nil, 403, CodeForbidden},
		{"choosing by header without the right", acme + "/activities", "tok", ok, []string{RevisionHeader, "trap"}, 403, CodeForbidden},
		{"unknown tenant", "/v1/namespaces/default/tenants/ghost/activities", "tok", ok, nil, 401, CodeUnauthenticated},
		{"another tenant's token", "/v1/namespaces/default/tenants/nosplit/activities", "ops-tok", ok, nil, 401, CodeUnauthenticated},
		{"no split", "/v1/namespaces/default/tenants/nosplit/activities", "tok", ok, nil, 404, CodeNoSplit},
		{"unknown tag", acme + "/tags/blue/activities", "ops-tok", ok, nil, 404, CodeUnknownTag},
		{"no such flow", acme + "/activities", "tok", `{"kind":"message","flow_id":"nope"}`, nil, 404, CodeNoSuchFlow},
		{"body too large", acme + "/activities", "tok", `{"kind":"message","payload":"` + strings.Repeat("x", 4096) + `"}`, nil, 413, CodeTooLarge},
		{"guest trap", acme + "/tags/trap/activities", "ops-tok", ok, nil, 502, CodeGuestTrap},
		{"timeout", acme + "/tags/loop/activities", "ops-tok", ok, nil, 504, CodeTimeout},
		{"revision not loaded", acme + "/tags/gone/activities", "ops-tok", ok, nil, 503, CodeNoReadyRevision},
		{"another tenant's revision by header", acme + "/activities", "ops-tok", ok, []string{RevisionHeader, "foreign"}, 503, CodeNoReadyRevision},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ns, tenant := "default", "acme"
			if strings.Contains(tc.path, "/tenants/ghost/") {
				tenant = "ghost"
			} else if strings.Contains(tc.path, "/tenants/nosplit/") {
				tenant = "nosplit"
			}
			counted := requestsWithCode(t, reg, ns, tenant, tc.status)
			unauthenticated := counterValue(t, reg, "packhost_dispatcher_unauthenticated_total")
			before := store.Commits
			w, eb := do(tc.path, tc.token, tc.body, tc.hdr...)
			if w.Code != tc.status || eb.Error.Code != tc.code || eb.Error.Message == "" {
				t.Fatalf("got %d %q, want %d %q: %s", w.Code, eb.Error.Code, tc.status, tc.code, w.Body)
			}
			if store.Commits != before {
				t.Fatal("a refused activity changed state")
			}
			if (tc.status == 429 || tc.status == 503) && w.Header().Get("Retry-After") == "" {
				t.Error("no Retry-After")
			}
			// The metrics count the status the caller actually got, once; a caller
			// not authenticated is counted without the tenant it named.
			if tc.status == http.StatusUnauthorized {
				if got := counterValue(t, reg, "packhost_dispatcher_unauthenticated_total") - unauthenticated; got != 1 {
					t.Errorf("packhost_dispatcher_unauthenticated_total grew by %v, want 1", got)
				}
				if got := requestsWithCode(t, reg, ns, tenant, tc.status) - counted; got != 0 {
					t.Errorf("an unauthenticated request was counted for tenant %q", tenant)
				}
			} else if got := requestsWithCode(t, reg, ns, tenant, tc.status) - counted; got != 1 {
				t.Errorf("packhost_dispatcher_requests_total{tenant=%q,code=%q} grew by %v, want 1", tenant, strconv.Itoa(tc.status), got)
			}
		})
	}

	// A routing caller picks a revision by tag; everyone is served by the split.
	w, _ := do(acme+"/tags/stable/activities", "ops-tok", ok)
	if w.Code != 200 || w.Header().Get(RevisionHeader) != "counter" || !strings.Contains(w.Body.String(), `"count":1`) {
		t.Fatalf("tagged request: %d %s", w.Code, w.Body)
	}
	w, _ = do(acme+"/activities", "tok", ok)
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"revision":"counter"`) {
		t.Fatalf("split request: %d %s", w.Code, w.Body)
	}
	if got := router.Dispatched("default", "acme")["counter"]; got != 2 {
		t.Errorf("dispatched count %d, want 2", got)
	}
	// A rollout's analysis counted every answer of a loaded revision, the trap's 502 and
	// the loop's 504 as errors, the unknown flow's 404 not; nothing for revisions that
	// are not loaded here or answers given before a revision was chosen.
	windows, _ := router.ClosedWindows("default", "acme", time.Now().Add(time.Hour))
	if len(windows) != 1 {
		t.Fatalf("analysis windows: %+v", windows)
	}
	got := windows[0].Revisions
	if c := got["counter"]; c.Activities != 3 || c.Errors != 0 || len(got) != 3 ||
		got["trap"].Activities != 1 || got["trap"].Errors != 1 || got["loop"].Activities != 1 || got["loop"].Errors != 1 {
		t.Errorf("analysis counts: %+v", got)
	}

	// Past the replica's in-flight limit: 429 with Retry-After.
	s.MaxInFlight = 1
	s.inFlight.Add(1)
	w, eb := do(acme+"/activities", "tok", ok)
	s.inFlight.Add(-1)
	if w.Code != 429 || eb.Error.Code != CodeOverloaded || w.Header().Get("Retry-After") == "" {
		t.Fatalf("in-flight limit: %d %s", w.Code, w.Body)
	}
}

// serveLoopback starts s on a free loopback port; stop shuts it down and returns what
// Start returned.
func serveLoopback(t *testing.T, s *Server) (addr net.Addr, stop func() error) {
	t.Helper()
	s.Addr = "127.0.0.1:0"
	addr, err := s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	return addr, sync.OnceValue(func() error { cancel(); return <-done })
}

func TestShutdownStopsServing(t *testing.T) {
	s, _ := newTestServer(t, "echo")
	addr, stop := serveLoopback(t, s)
	url := "http://" + addr.String() + "/v1/namespaces/default/tenants/acme/activities"
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"kind":"message","payload":1}`))
	req.Header.Set("Authorization", "Bearer tok")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("before shutdown: %v %v", err, resp)
	}
	resp.Body.Close()
	if err := stop(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if _, err := http.Post(url, "application/json", strings.NewReader(`{}`)); err == nil {
		t.Fatal("the server still answers after shutdown")
	}
}

func TestAppendResponseIsJSON(t *testing.T) {
	out := []runtime.Activity{
		{Kind: "custom", Action: "response", Payload: json.RawMessage(`{"a": [1, 2]}`)},
		{Kind: "custom", Action: "say \"hi\"\n\u00e9"},
	}
	b := appendResponse(nil, "rev-1", out)
	var got Response
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
	if got.Revision != "rev-1" || len(got.Activities) != 2 || got.Activities[1].Action != "say \"hi\"\n\u00e9" || string(got.Activities[0].Payload) != `{"a": [1, 2]}` {
		t.Fatalf("round trip: %+v", got)
	}
	if b := appendResponse(nil, "r", nil); string(b) != `{"revision":"r","activities":[]}` {
		t.Fatalf("no replies: %s", b)
	}
}

func TestProviderEndpoints(t *testing.T) {
	e := newEngine(t)
	router := NewRouter()
	router.PublishTenant("default", "acme", &TenantConfig{Namespace: "default", Name: "acme", Tokens: map[string]string{"tok": "app"}, MaxBodyBytes: 4096})
	reg := prometheus.NewRegistry()
	s := &Server{Router: router, Revisions: revisions{"hooks": loadRevision(t, e, "hooks", "webhook", nil, runtime.Limits{})},
		Metrics: NewMetrics(reg), Log: logr.Discard()}
	h := s.Handler()
	call := func(method, path, body string) (int, string) {
		req := httptest.NewRequest(method, "/v1/namespaces/default/tenants/acme/revisions/"+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer tok")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code, w.Body.String()
	}
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		says                     string
	}{
		{"identify", "POST", "hooks/identify", `{"headers":{"X-Webhook-Id":"w-1","X-Account":"a-1"}}`, 200, `"outcome":"Identified","pack":"webhook","provider_type":"webhook","provider_id":"w-1","endpoint_id":"a-1"`},
		{"scoped identify drops unhinted headers", "POST", "hooks/identify?scoped=true", `{"headers":{"X-Webhook-Id":"w-1","X-Account":"a-1"}}`, 200, `"provider_id":"w-1"}`},
		{"no match", "POST", "hooks/identify", `{"headers":{}}`, 200, `"outcome":"NoMatch"`},
		{"describe", "GET", "hooks/identify", ``, 200, `"headers":["X-Webhook-Id"]`},
		{"invoke", "POST", "hooks/invoke", `{"provider_type":"webhook","op":"send","correlation_id":"c-9","payload":{}}`, 200, `"idempotency_key":"c-9"`},
		{"invoke hands the trace id to the pack", "POST", "hooks/invoke", `{"provider_type":"webhook","op":"send","correlation_id":"c-10","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","payload":{}}`, 200, `"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"`},
		{"invoke outside the allowlist", "POST", "hooks/invoke", `{"provider_type":"webhook","op":"drop"}`, 422, CodeOpNotAllowed},
		{"invoke of a provider type no pack binds", "POST", "hooks/invoke", `{"provider_type":"sms","op":"send"}`, 422, CodeNoBinding},
		{"invoke on a revision not loaded", "POST", "ghost/invoke", `{"provider_type":"webhook","op":"send"}`, 503, CodeNotLoaded},
		{"invoke without op", "POST", "hooks/invoke", `{"provider_type":"webhook"}`, 400, CodeInvalidActivity},
		{"bad JSON", "POST", "hooks/identify", `{`, 400, CodeInvalidActivity},
		{"unknown revision", "POST", "ghost/identify", `{}`, 503, CodeNoReadyRevision},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := call(tc.method, tc.path, tc.body)
			if status != tc.status || !strings.Contains(body, tc.says) {
				t.Fatalf("got %d %s, want %d saying %s", status, body, tc.status, tc.says)
			}
		})
	}
}

// requestsWithCode sums packhost_dispatcher_requests_total for a tenant and status code.
func requestsWithCode(t *testing.T, reg *prometheus.Registry, ns, tenant string, code int) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() != "packhost_dispatcher_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["namespace"] == ns && labels["tenant"] == tenant && labels["code"] == strconv.Itoa(code) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// A body of undeclared length (chunked) is held to the same limit as a declared one.
func TestUndeclaredBodyLength(t *testing.T) {
	s, _ := newTestServer(t, "echo")
	h := s.Handler()
	for _, tc := range []struct {
		payload int
		status  int
	}{{100, 200}, {5000, 413}} {
		body := `{"kind":"message","user_id":"u","payload":"` + strings.Repeat("x", tc.payload) + `"}`
		req := httptest.NewRequest(http.MethodPost, "/v1/namespaces/default/tenants/acme/activities", io.NopCloser(strings.NewReader(body)))
		req.ContentLength = -1
		req.Header.Set("Authorization", "Bearer tok")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != tc.status {
			t.Errorf("%d-byte payload of undeclared length: %d %s, want %d", tc.payload, w.Code, w.Body, tc.status)
		}
		if tc.status == 413 && !strings.Contains(w.Body.String(), CodeTooLarge) {
			t.Errorf("413 without code %s: %s", CodeTooLarge, w.Body)
		}
	}
}

// A client that stops sending its body is cut off at ReadTimeout with a typed error,
// and the in-flight slot it held is free again.
func TestSlowBodyIsCutOff(t *testing.T) {
	s, _ := newTestServer(t, "echo")
	s.ReadTimeout, s.MaxInFlight = 300*time.Millisecond, 1
	addr, stop := serveLoopback(t, s)
	t.Cleanup(func() { _ = stop() })

	conn, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"kind":"message","payload":1}`
	_, err = fmt.Fprintf(conn, "POST /v1/namespaces/default/tenants/acme/activities HTTP/1.1\r\nHost: x\r\n"+
		"Authorization: Bearer tok\r\nContent-Length: %d\r\n\r\n%s", len(body), body[:10])
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body: %v", err)
	}
	answer, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(answer), CodeInvalidActivity) {
		t.Fatalf("stalled body: %d %s", resp.StatusCode, answer)
	}
	if n := s.inFlight.Load(); n != 0 {
		t.Fatalf("%d activities still in flight after the stalled request was answered", n)
	}
	// The one slot serves the next request.
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr.String()+"/v1/namespaces/default/tenants/acme/activities", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer tok")
	next, err := http.DefaultClient.Do(req)
	if err != nil || next.StatusCode != http.StatusOK {
		t.Fatalf("after the stalled request: %v %v", err, next)
	}
	next.Body.Close()
}

// A revision that served nothing has no series: a revision name a routing caller makes
// up, and a revision answered 503 for after its series were removed at unload, must not
// leave series behind that nothing removes again.
func TestUnservedRevisionsMakeNoSeries(t *testing.T) {
	s, rev := newTestServer(t, "echo")
	reg := prometheus.NewRegistry()
	s.Metrics = NewMetrics(reg)
	loaded := revisions{"v1": rev}
	s.Revisions = loaded
	h := s.Handler()
	send := func(hdr ...string) int {
		req := httptest.NewRequest(http.MethodPost, "/v1/namespaces/default/tenants/acme/activities", strings.NewReader(`{"kind":"message","user_id":"ann"}`))
		req.Header.Set("Authorization", "Bearer ops")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code
	}
	for i := range 20 {
		if code := send(RevisionHeader, fmt.Sprintf("made-up-%d", i)); code != http.StatusServiceUnavailable {
			t.Fatalf("a made-up revision answered %d", code)
		}
	}
	if code := send(); code != http.StatusOK {
		t.Fatalf("v1 answered %d", code)
	}
	// v1 unloads as the controller unloads it: out of the registry, closed, series
	// removed. What the split still sends it is answered 503 and makes none again.
	delete(loaded, "v1")
	rev.Close(context.Background())
	s.Metrics.ForgetRevision("default", "v1")
	if code := send(); code != http.StatusServiceUnavailable {
		t.Fatalf("the unloaded v1 answered %d", code)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	unserved := 0.0
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "revision" && l.GetValue() != "" {
					t.Errorf("%s has a series for revision %q after it unloaded or was never loaded", f.GetName(), l.GetValue())
				}
				if f.GetName() == "packhost_dispatcher_requests_total" && l.GetName() == "code" && l.GetValue() == "503" {
					unserved += m.GetCounter().GetValue()
				}
			}
		}
	}
	if unserved != 21 {
		t.Errorf("%v requests counted as 503, want 21", unserved)
	}
}
