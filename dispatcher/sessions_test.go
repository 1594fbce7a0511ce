package dispatcher

import (
	"cmp"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/runtime"
)

// storePins reads a session's pins from the revisions' in-memory stores, by revision
// (namespace/name), as state.Store reads them from the revisions' ConfigMaps.
type storePins map[string]*runtime.MemStore

func (p storePins) SessionPins(session string, now time.Time) []runtime.Pin {
	var out []runtime.Pin
	for rev, store := range p {
		for _, w := range store.Parked(session) {
			if now.Before(w.Expires) {
				out = append(out, runtime.Pin{Revision: rev, Pack: w.Pack, Flow: w.Flow, Expires: w.Expires})
			}
		}
	}
	slices.SortFunc(out, func(a, b runtime.Pin) int {
		return cmp.Or(cmp.Compare(a.Revision, b.Revision), cmp.Compare(a.Pack, b.Pack), cmp.Compare(a.Flow, b.Flow))
	})
	return out
}

// The survey+echo case of issue 16 through the dispatcher, with pins per flow: a
// session's parked survey keeps the survey's activities on the revision that parked
// it, while echo and a new flow of the same user are routed by the split, and an
// activity naming no flow while flows are parked on two revisions is refused with 409
// ambiguous_flow, naming them.
func TestPinsArePerSessionAndFlow(t *testing.T) {
	e := newEngine(t)
	survey, err := packs.Build("survey")
	if err != nil {
		t.Fatal(err)
	}
	echo, err := packs.Build("echo")
	if err != nil {
		t.Fatal(err)
	}
	// The survey pack with a second flow, each flow parking its own answers.
	twoFlows := packs.WithManifest(survey, `{"abi":1,"pack_id":"survey","version":"1","flows":[{"id":"survey","type":"message","entry":true},{"id":"feedback","type":"feedback","entry":true}],"capabilities":{"session":true}}`)
	stores := storePins{"default/v1": runtime.NewMemStore(), "default/v2": runtime.NewMemStore()}
	revs := revisions{}
	for _, name := range []string{"v1", "v2"} {
		ctx := context.Background()
		cfg := runtime.RevisionConfig{Name: "default/" + name, Env: "prod", Tenant: "default/acme", Store: stores["default/"+name], Logger: logr.Discard()}
		for _, b := range [][]byte{twoFlows, echo} {
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
		revs[name] = rev
	}
	router := NewRouter()
	router.PublishTenant("default", "acme", &TenantConfig{Namespace: "default", Name: "acme", Env: "prod", Tokens: map[string]string{"tok": "app"}, MaxBodyBytes: 4096})
	route := func(rev string) {
		router.PublishTable("default", "acme", NewTable("s", []Route{{Revision: rev, Percent: 100}}, true))
	}
	h := (&Server{Router: router, Revisions: revs, Pins: stores, Metrics: NewMetrics(prometheus.NewRegistry()), Log: logr.Discard()}).Handler()
	send := func(body string) (int, string, string) {
		req := httptest.NewRequest(http.MethodPost, "/v1/namespaces/default/tenants/acme/activities", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer tok")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code, w.Header().Get(RevisionHeader), w.Body.String()
	}
	steps := []struct {
		name, route, body string
		status            int
		revision, want    string
	}{
		{"the survey parks on v1", "v1", `{"kind":"message","user_id":"ann","flow_id":"survey","payload":{}}`, 200, "v1", `"step":1`},
		// v1 leaves the split: it drains, keeping ann's survey.
		{"no flow: the parked survey, on v1", "v2", `{"kind":"message","user_id":"ann","payload":"Ann"}`, 200, "v1", `"step":2`},
		{"flow_id echo: routed by the split, answered by echo", "v2", `{"kind":"message","user_id":"ann","flow_id":"echo","payload":{"x":1}}`, 200, "v2", `{"x":1}`},
		{"a new flow of ann's parks on v2", "v2", `{"kind":"message","user_id":"ann","flow_id":"feedback","payload":{}}`, 200, "v2", `"step":1`},
		{"no flow, flows parked on two revisions", "v2", `{"kind":"message","user_id":"ann","payload":"?"}`, 409, "", CodeAmbiguousFlow},
		{"flow_type names the feedback flow: v2", "v2", `{"kind":"message","user_id":"ann","flow_type":"feedback","payload":"F1"}`, 200, "v2", `"step":2`},
		{"flow_id survey: still on v1", "v2", `{"kind":"message","user_id":"ann","flow_id":"survey","payload":"ops"}`, 200, "v1", `"step":3`},
		{"pack_id survey alone: waits on two revisions", "v2", `{"kind":"message","user_id":"ann","pack_id":"survey","payload":"?"}`, 409, "", CodeAmbiguousFlow},
		{"bob naming ann's survey starts his own by the split", "v2", `{"kind":"message","user_id":"bob","flow_id":"survey","payload":{}}`, 200, "v2", `"step":1`},
		{"a flow_id that names no flow", "v2", `{"kind":"message","user_id":"ann","flow_id":"nope"}`, 404, "", CodeNoSuchFlow},
		{"the survey completes on v1", "v2", `{"kind":"message","user_id":"ann","flow_id":"survey","payload":"a@b"}`, 200, "v1", `"answers":["Ann","ops","a@b"]`},
		{"no flow: the one flow left, on v2", "v2", `{"kind":"message","user_id":"ann","payload":"F2"}`, 200, "v2", `"step":3`},
	}
	for _, st := range steps {
		route(st.route)
		status, rev, body := send(st.body)
		if status != st.status || !strings.Contains(body, st.want) || (st.revision != "" && rev != st.revision) {
			t.Fatalf("%s: %d from %q: %s; want %d from %q with %s", st.name, status, rev, body, st.status, st.revision, st.want)
		}
		if st.status == http.StatusConflict {
			var eb errorBody
			_ = json.Unmarshal([]byte(body), &eb)
			for _, flow := range []string{`flow "survey" of pack "survey" on revision default/v1`, `flow "feedback" of pack "survey" on revision default/v2`} {
				if !strings.Contains(eb.Error.Message, flow) {
					t.Fatalf("%s: the message %q does not name %s", st.name, eb.Error.Message, flow)
				}
			}
		}
	}
	if n := stores["default/v1"].Waits(); n != 0 {
		t.Fatalf("v1 holds %d waits after ann's survey completed: it could not retire", n)
	}
}
