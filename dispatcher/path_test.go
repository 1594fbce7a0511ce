package dispatcher

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// FuzzActivityPathMatchesMux: the activity route's fast path takes a request only when
// the mux would route it to the same handler with the same namespace and tenant.
func FuzzActivityPathMatchesMux(f *testing.F) {
	for _, p := range []string{
		"/v1/namespaces/default/tenants/acme/activities",
		"/v1/namespaces/default/tenants/acme/activities/",
		"/v1/namespaces//tenants/acme/activities",
		"/v1/namespaces/./tenants/acme/activities",
		"/v1/namespaces/a/tenants/../activities",
		"/v1/namespaces/a%2Fb/tenants/acme/activities",
		"/v1/namespaces/%61/tenants/acme/activities",
		"/v1/namespaces/a/b/tenants/acme/activities",
		"/v1/namespaces/a/tenants/acme/tags/x/activities",
		"/v1//namespaces/a/tenants/acme/activities",
		"/v1/namespaces/a/tenants/acme/activities?x=1",
	} {
		f.Add("POST", p)
	}
	f.Add("GET", "/v1/namespaces/default/tenants/acme/activities")
	mux := http.NewServeMux()
	var gotNS, gotTenant string
	mux.HandleFunc("POST /v1/namespaces/{ns}/tenants/{tenant}/activities", func(w http.ResponseWriter, r *http.Request) {
		gotNS, gotTenant = r.PathValue("ns"), r.PathValue("tenant")
	})
	f.Fuzz(func(t *testing.T, method, target string) {
		r, err := http.NewRequest(method, "http://h"+target, nil)
		if err != nil || r.URL.Host != "h" {
			return
		}
		ns, tenant, ok := activityPath(r)
		if !ok {
			return
		}
		gotNS, gotTenant = "", ""
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, r)
		if w.Code != http.StatusOK || gotNS != ns || gotTenant != tenant {
			t.Fatalf("%s %q: fast path says %q/%q; the mux answers %d with %q/%q", method, target, ns, tenant, w.Code, gotNS, gotTenant)
		}
	})
}

func TestActivityPathTakesThePlainRoute(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/v1/namespaces/team-a/tenants/acme/activities", nil)
	if ns, tenant, ok := activityPath(r); !ok || ns != "team-a" || tenant != "acme" {
		t.Fatalf("activityPath = %q, %q, %v; want team-a, acme, true", ns, tenant, ok)
	}
	for _, target := range []string{"/v1/namespaces/team-a/tenants/acme/tags/canary/activities", "/v1/namespaces/a%2Fb/tenants/acme/activities"} {
		if _, _, ok := activityPath(httptest.NewRequest(http.MethodPost, target, nil)); ok {
			t.Errorf("activityPath took %s, which is the mux's", target)
		}
	}
}
