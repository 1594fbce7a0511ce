package dispatcher

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/packhost/packhost/runtime"
)

// The replica is Ready once it has synced and loaded what it can, and no tenant's
// revision makes it NotReady after that.
func TestReadiness(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type step struct {
		after   time.Duration // since start
		synced  bool
		pending int
		err     error
		ready   bool
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"not synced", []step{{0, false, 0, nil, false}, {10 * time.Minute, false, 0, nil, false}}},
		{"synced, everything loaded", []step{{time.Second, true, 0, nil, true}}},
		{"a routed revision still loading holds it back during warm-up only", []step{
			{time.Second, true, 2, nil, false}, {59 * time.Second, true, 1, nil, false}, {61 * time.Second, true, 1, nil, true}}},
		{"loaded before the warm-up ends", []step{{time.Second, true, 2, nil, false}, {5 * time.Second, true, 0, nil, true}}},
		{"a revision deleted or failing later never makes it NotReady", []step{
			{time.Second, true, 0, nil, true}, {2 * time.Second, true, 3, nil, true}, {time.Hour, true, 3, errors.New("boom"), true}}},
		{"an error counting is waited out like a pending revision", []step{
			{time.Second, true, 0, errors.New("cache"), false}, {2 * time.Minute, true, 0, errors.New("cache"), true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cur step
			now := t0
			r := &Readiness{
				Synced:  func(context.Context) bool { return cur.synced },
				Pending: func(context.Context) (int, error) { return cur.pending, cur.err },
				WarmUp:  time.Minute,
				Now:     func() time.Time { return now },
			}
			r.Start(t0)
			for i, st := range tc.steps {
				cur, now = st, t0.Add(st.after)
				err := r.Check(httptest.NewRequest(http.MethodGet, "/readyz", nil))
				if (err == nil) != st.ready {
					t.Fatalf("step %d (%v): ready=%v (%v), want %v", i, st.after, err == nil, err, st.ready)
				}
			}
		})
	}
}

// A tenant whose routed revision is missing gets 503 no_ready_revision for its
// activities; the replica stays Ready and serves everyone else.
func TestMissingRevisionIsTheTenantsProblemOnly(t *testing.T) {
	e := newEngine(t)
	router := NewRouter()
	for _, tn := range []string{"acme", "other"} {
		router.PublishTenant("default", tn, &TenantConfig{Namespace: "default", Name: tn, Tokens: map[string]string{tn + "-tok": "app"}})
	}
	router.PublishTable("default", "acme", NewTable("s", []Route{{Revision: "deleted", Percent: 100}}, true))
	router.PublishTable("default", "other", NewTable("s", []Route{{Revision: "v1", Percent: 100}}, true))
	revs := revisions{"other/v1": loadRevision(t, e, "v1", "echo", runtime.NewMemStore(), runtime.Limits{})}
	ready := &Readiness{
		Synced:  func(context.Context) bool { return true },
		Pending: func(context.Context) (int, error) { return 1, nil }, // acme's revision never comes
		WarmUp:  time.Millisecond,
	}
	ready.Start(time.Now().Add(-time.Second))
	reg := prometheus.NewRegistry()
	h := (&Server{Router: router, Revisions: revs, Ready: ready.Check, Metrics: NewMetrics(reg), Log: logr.Discard()}).Handler()
	do := func(method, path, token string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, strings.NewReader(`{"kind":"message","user_id":"u"}`))
		req.Header.Set("Authorization", "Bearer "+token)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w
	}
	if w := do(http.MethodGet, "/readyz", ""); w.Code != http.StatusOK {
		t.Fatalf("/readyz: %d %s", w.Code, w.Body)
	}
	if w := do(http.MethodPost, "/v1/namespaces/default/tenants/acme/activities", "acme-tok"); w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), CodeNoReadyRevision) {
		t.Fatalf("acme: %d %s, want 503 %s", w.Code, w.Body, CodeNoReadyRevision)
	}
	if w := do(http.MethodPost, "/v1/namespaces/default/tenants/other/activities", "other-tok"); w.Code != http.StatusOK {
		t.Fatalf("other: %d %s", w.Code, w.Body)
	}
}
