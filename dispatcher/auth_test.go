package dispatcher

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// An unauthenticated caller learns nothing from the answer: an unknown tenant, a missing
// token, a malformed header and a wrong token (or another tenant's) get the same status,
// headers and body, so tenants cannot be discovered by probing.
func TestUnauthenticatedAnswersAreIdentical(t *testing.T) {
	s, _ := newTestServer(t, "echo")
	s.Router.PublishTenant("default", "beta", &TenantConfig{Namespace: "default", Name: "beta", Tokens: map[string]string{"beta-tok": "app"}})
	h := s.Handler()
	body := `{"kind":"message","user_id":"ann"}`
	for _, path := range []string{"activities", "tags/stable/activities", "revisions/v1/identify", "revisions/v1/invoke"} {
		var first *httptest.ResponseRecorder
		for _, tc := range []struct{ name, tenant, auth string }{
			{"unknown tenant", "ghost", "Bearer tok"},
			{"a known tenant's name in another namespace", "acme", "Bearer tok"},
			{"no token", "acme", ""},
			{"not a bearer token", "acme", "Basic dG9rOg=="},
			{"empty bearer token", "acme", "Bearer "},
			{"wrong token", "acme", "Bearer nope"},
			{"token prefix", "acme", "Bearer to"},
			{"token with a suffix", "acme", "Bearer tokk"},
			{"another tenant's token", "acme", "Bearer beta-tok"},
			{"unknown tenant without a token", "ghost", ""},
		} {
			ns := "default"
			if tc.name == "a known tenant's name in another namespace" {
				ns = "elsewhere"
			}
			req := httptest.NewRequest(http.MethodPost, "/v1/namespaces/"+ns+"/tenants/"+tc.tenant+"/"+path, strings.NewReader(body))
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != http.StatusUnauthorized || !strings.Contains(w.Body.String(), `"code":"`+CodeUnauthenticated+`"`) {
				t.Errorf("%s %s: %d %s, want 401 %s", path, tc.name, w.Code, w.Body, CodeUnauthenticated)
			}
			if strings.Contains(w.Body.String(), tc.tenant) || strings.Contains(w.Body.String(), ns) {
				t.Errorf("%s %s: the answer names the tenant: %s", path, tc.name, w.Body)
			}
			if first == nil {
				first = w
				continue
			}
			if w.Body.String() != first.Body.String() || fmt.Sprint(w.Header()) != fmt.Sprint(first.Header()) {
				t.Errorf("%s %s answers differently from an unknown tenant:\n%v %s\n%v %s", path, tc.name, w.Header(), w.Body, first.Header(), first.Body)
			}
		}
	}
}

// No request creates a series before it is authenticated: 200 requests to made-up
// tenants, with and without tokens, leave the number of series as it was, and are
// counted in one series without labels.
func TestUnauthenticatedRequestsMakeNoSeries(t *testing.T) {
	s, _ := newTestServer(t, "echo")
	reg := prometheus.NewRegistry()
	s.Metrics = NewMetrics(reg)
	h := s.Handler()
	send := func(tenant, token string) int {
		req := httptest.NewRequest(http.MethodPost, "/v1/namespaces/default/tenants/"+tenant+"/activities", strings.NewReader(`{"kind":"message"}`))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code
	}
	before := seriesCount(t, reg)
	for i := range 100 {
		send(fmt.Sprintf("made-up-%d-%s", i, strings.Repeat("x", 200)), "tok")
		send("acme", fmt.Sprintf("wrong-%d", i))
	}
	if after := seriesCount(t, reg); after != before {
		t.Fatalf("unauthenticated requests grew the series from %d to %d", before, after)
	}
	if got := counterValue(t, reg, "packhost_dispatcher_unauthenticated_total"); got != 200 {
		t.Errorf("packhost_dispatcher_unauthenticated_total = %v, want 200", got)
	}
	if code := send("acme", "tok"); code != http.StatusOK {
		t.Fatalf("an authenticated request answered %d", code)
	}
	if after := seriesCount(t, reg); after == before {
		t.Fatal("an authenticated, served request made no series: the count above proves nothing")
	}
}

// A refused caller waits RefusalDelay for its answer, so a flood of requests nobody can
// authenticate costs the replica parked goroutines, not processors; at most
// maxDelayedRefusals wait at once, and past that a refusal is answered at once and
// closes its connection.
func TestRefusalsAreDelayedAndBounded(t *testing.T) {
	s, _ := newTestServer(t, "echo")
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	client := &http.Client{Timeout: 20 * time.Second}
	refuse := func() (*http.Response, time.Duration) {
		t.Helper()
		start := time.Now()
		resp, err := client.Post(srv.URL+"/v1/namespaces/default/tenants/ghost/activities", "application/json", strings.NewReader(`{"kind":"message"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("a made-up tenant: %d, want 401", resp.StatusCode)
		}
		return resp, time.Since(start)
	}
	s.RefusalDelay = 200 * time.Millisecond
	if resp, took := refuse(); took < s.RefusalDelay || resp.Close {
		t.Fatalf("a refusal answered after %s (close %v), want after at least %s on a kept connection", took, resp.Close, s.RefusalDelay)
	}
	// Every place taken: the next refusal cannot wait the hour, and ends its connection.
	s.RefusalDelay = time.Hour
	for range maxDelayedRefusals {
		s.refusals <- struct{}{}
	}
	if resp, _ := refuse(); !resp.Close {
		t.Fatal("a refusal past the bound kept its connection")
	}
	for range maxDelayedRefusals {
		<-s.refusals
	}
	if n := len(s.refusals); n != 0 {
		t.Fatalf("%d delayed refusals' places held after every refusal was answered", n)
	}
}

func TestCallerMatchesWholeTokensOnly(t *testing.T) {
	cfg := &TenantConfig{Tokens: map[string]string{"secret-token": "app", "ops-token-that-is-much-longer": "ops"}}
	published := NewRouter()
	published.PublishTenant("default", "acme", &TenantConfig{Tokens: cfg.Tokens})
	fromRouter, _ := published.Tenant("default", "acme")
	for _, c := range []*TenantConfig{cfg, fromRouter} {
		for _, tc := range []struct {
			token, caller string
			ok            bool
		}{
			{"secret-token", "app", true},
			{"ops-token-that-is-much-longer", "ops", true},
			{"secret-toke", "", false},
			{"secret-tokenn", "", false},
			{"", "", false},
			{"SECRET-TOKEN", "", false},
		} {
			if caller, ok := c.Caller(tc.token); caller != tc.caller || ok != tc.ok {
				t.Errorf("Caller(%q) = %q, %v; want %q, %v", tc.token, caller, ok, tc.caller, tc.ok)
			}
		}
	}
}

// Every answer of the dispatcher port, the mux's 404 and 405 included, is the JSON
// error body; /metrics is not served there, and the probes name no tenant or revision.
func TestEveryAnswerIsJSON(t *testing.T) {
	s, _ := newTestServer(t, "echo")
	s.Ready = func(*http.Request) error { return fmt.Errorf("revision default/v1 of tenant acme is not loaded") }
	h := s.Handler()
	for _, tc := range []struct {
		name, method, path string
		status             int
		code, allow        string
	}{
		{"unknown path", "GET", "/nope", 404, CodeNotFound, ""},
		{"metrics moved to the manager's metrics port", "GET", "/metrics", 404, CodeNotFound, ""},
		{"GET activities", "GET", "/v1/namespaces/default/tenants/acme/activities", 405, CodeMethodNotAllowed, "POST"},
		{"PUT tagged activities", "PUT", "/v1/namespaces/default/tenants/acme/tags/x/activities", 405, CodeMethodNotAllowed, "POST"},
		{"DELETE identify", "DELETE", "/v1/namespaces/default/tenants/acme/revisions/v1/identify", 405, CodeMethodNotAllowed, "GET, HEAD, POST"},
		{"GET invoke", "GET", "/v1/namespaces/default/tenants/acme/revisions/v1/invoke", 405, CodeMethodNotAllowed, "POST"},
		{"POST healthz", "POST", "/healthz", 405, CodeMethodNotAllowed, "GET, HEAD"},
		{"not ready", "GET", "/readyz", 503, CodeNotReady, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest(tc.method, tc.path, nil))
			if w.Code != tc.status || w.Header().Get("Content-Type") != "application/json" || !strings.Contains(w.Body.String(), `"code":"`+tc.code+`"`) {
				t.Fatalf("%s %s: %d %q %s, want %d with code %s", tc.method, tc.path, w.Code, w.Header().Get("Content-Type"), w.Body, tc.status, tc.code)
			}
			if eb := decodeError(t, w.Body.Bytes()); eb.Error.Message == "" {
				t.Errorf("no message: %s", w.Body)
			}
			if got := w.Header().Get("Allow"); got != tc.allow {
				t.Errorf("Allow: %q, want %q", got, tc.allow)
			}
			if b := w.Body.String(); strings.Contains(b, "acme") || strings.Contains(b, "v1\"") || strings.Contains(b, "default/") {
				t.Errorf("the answer names a tenant or revision: %s", b)
			}
		})
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		s.Ready = nil
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
		if w.Code != http.StatusOK || w.Body.String() != "ok" {
			t.Errorf("%s: %d %q, want 200 ok", path, w.Code, w.Body)
		}
	}
}
