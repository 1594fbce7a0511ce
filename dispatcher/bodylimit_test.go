package dispatcher

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/packhost/packhost/runtime"
)

// bodyLimited are revisions with limits of their own, as the controllers' registry is.
type bodyLimited struct {
	revisions
	limits map[string]int64
}

func (b bodyLimited) MaxBodyBytes(_, _, name string) (int64, bool) {
	l, ok := b.limits[name]
	return l, ok
}

// A revision's own maxRequestBodyBytes, lower than its tenant's, refuses a larger body
// with 413 before the guest runs; a revision without one takes what the tenant takes.
func TestRevisionBodyLimit(t *testing.T) {
	e := newEngine(t)
	store := runtime.NewMemStore()
	revs := bodyLimited{revisions: revisions{
		"small": loadRevision(t, e, "small", "counter", store, runtime.Limits{}),
		"big":   loadRevision(t, e, "big", "counter", store, runtime.Limits{}),
	}, limits: map[string]int64{"small": 256}}
	router := NewRouter()
	router.PublishTenant("default", "acme", &TenantConfig{Namespace: "default", Name: "acme",
		Tokens: map[string]string{"tok": "app", "ops-tok": "ops"}, RoutingCallers: []string{"ops"}, MaxBodyBytes: 4096})
	router.PublishTable("default", "acme", NewTable("s", []Route{{Revision: "small", Percent: 100}, {Revision: "big", Percent: 0, Tag: "big"}}, true))
	s := &Server{Router: router, Revisions: revs, Metrics: NewMetrics(prometheus.NewRegistry()), Log: logr.Discard()}
	h := s.Handler()
	body := `{"kind":"message","user_id":"u","payload":"` + strings.Repeat("x", 1000) + `"}`
	for _, tc := range []struct {
		name, path string
		want       int
	}{
		{"over the revision's limit", "/v1/namespaces/default/tenants/acme/activities", http.StatusRequestEntityTooLarge},
		{"a revision without one", "/v1/namespaces/default/tenants/acme/tags/big/activities", http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, tc.path, strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer ops-tok")
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != tc.want {
				t.Fatalf("got %d %s, want %d", w.Code, w.Body, tc.want)
			}
		})
	}
	if store.Commits != 1 {
		t.Fatalf("%d commits, want 1: the refused activity must change nothing", store.Commits)
	}
}
