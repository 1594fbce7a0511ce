package dispatcher

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http/httpguts"

	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/runtime"
)

// The identify endpoint as the seed answers it: a map of the asked provider types, the
// wrapper's headers as a list, a pack's failure reported in its type's outcome; and
// every bad request refused with 400 before a guest runs.
func TestIdentifyEndpoint(t *testing.T) {
	e := newEngine(t)
	// A trapping identify pack (binds "probe" and "other") before the webhook pack.
	rev, err := packs.Revision(context.Background(), e, runtime.RevisionConfig{Name: "default/mixed", Env: "prod", Tenant: "default/acme",
		Logger: logr.Discard(), Policy: runtime.Policy{Env: []string{"PROBE"}}, Config: map[string]string{"PROBE": "identify=trap"}},
		"hostile/identify", "webhook")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rev.Close(context.Background()) })
	router := NewRouter()
	router.PublishTenant("default", "acme", &TenantConfig{Namespace: "default", Name: "acme", Tokens: map[string]string{"tok": "app"}, MaxBodyBytes: 8192})
	s := &Server{Router: router, Revisions: revisions{"hooks": loadRevision(t, e, "hooks", "webhook", nil, runtime.Limits{}), "mixed": rev},
		Metrics: NewMetrics(prometheus.NewRegistry()), Log: logr.Discard()}
	h := s.Handler()
	call := func(method, path, body string) (int, string) {
		req := httptest.NewRequest(method, "/v1/namespaces/default/tenants/acme/revisions/"+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer tok")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code, w.Body.String()
	}
	types := func(n int) string {
		ts := make([]string, n)
		for i := range ts {
			ts[i] = fmt.Sprintf("t%d", i)
		}
		return strings.Join(ts, ",")
	}
	quoted := func(list string) string { return `"` + strings.ReplaceAll(list, ",", `","`) + `"` }
	manyHeaders := `[` + strings.Repeat(`{"name":"X-N","value":"v"},`, 400) + `{"name":"X-N","value":"v"}]`
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		says                     string
	}{
		{"map form", "POST", "hooks/identify", `{"provider_types":["webhook","sms"],"headers":[{"name":"X-Webhook-Id","value":"w-1"}],"body":{"account":"a-1"}}`, 200,
			`{"provider_types":{"sms":{"outcome":"Unsupported"},"webhook":{"outcome":"Identified","pack":"webhook","provider_type":"webhook","provider_id":"w-1","endpoint_id":"a-1"}}}`},
		{"map form, scoped: the list's unhinted headers dropped", "POST", "hooks/identify?scoped=true", `{"provider_types":["webhook"],"headers":[{"name":"X-Account","value":"a-2"},{"name":"x-webhook-id","value":"w-2"}]}`, 200,
			`{"provider_types":{"webhook":{"outcome":"Identified","pack":"webhook","provider_type":"webhook","provider_id":"w-2"}}}`},
		{"a trapping pack is an error outcome and the probe goes on", "POST", "mixed/identify", `{"provider_types":["probe","webhook"],"headers":[{"name":"X-Webhook-Id","value":"w-3"}]}`, 200,
			`"probe":{"outcome":"Error","pack":"identify","provider_type":"probe","error":{"code":"guest_error","message":"`},
		{"  the other type is identified", "POST", "mixed/identify", `{"provider_types":["probe","webhook"],"headers":[{"name":"X-Webhook-Id","value":"w-3"}]}`, 200,
			`"webhook":{"outcome":"Identified","pack":"webhook","provider_type":"webhook","provider_id":"w-3"}`},
		{"single form of a trapping pack's type: its error", "POST", "mixed/identify", `{"provider_type":"probe"}`, 502, CodeGuestTrap},
		{"single form without a type: the overlay identifies past the trap", "POST", "mixed/identify", `{"headers":{"X-Webhook-Id":"w-4"}}`, 200, `"outcome":"Identified","pack":"webhook"`},
		{"single form keeps an object's repeated names", "POST", "hooks/identify", `{"headers":{"X-Webhook-Id":"w-5","X-Webhook-Id":"w-6"}}`, 200, `"provider_id":"w-5, w-6"`},
		{"hints of asked types, null without", "GET", "hooks/identify?provider_types=webhook,sms", ``, 200,
			`{"provider_types":{"sms":null,"webhook":{"provider_type":"webhook","headers":["X-Webhook-Id"],"json_pointers":["/account"],"pack":"webhook"}}}`},
		{"hints, the types repeated as parameters", "GET", "hooks/identify?provider_types=sms&provider_types=webhook", ``, 200, `"sms":null,"webhook":{`},
		{"every hint", "GET", "hooks/identify", ``, 200, `{"hints":[{"provider_type":"webhook","headers":["X-Webhook-Id"],"json_pointers":["/account"],"pack":"webhook"}]}`},

		{"too many types", "POST", "hooks/identify", `{"provider_types":[` + quoted(types(maxIdentifyTypes+1)) + `]}`, 400, "65 provider types, at most 64"},
		{"the most types", "POST", "hooks/identify", `{"provider_types":[` + quoted(types(maxIdentifyTypes)) + `]}`, 200, `"t63":{"outcome":"Unsupported"}`},
		{"a type twice", "POST", "hooks/identify", `{"provider_types":["webhook","webhook"]}`, 400, `provider type \"webhook\" is asked twice`},
		{"no types", "POST", "hooks/identify", `{"provider_types":[]}`, 400, "provider_types is empty"},
		{"a type no manifest can bind", "POST", "hooks/identify", `{"provider_types":["web hook"]}`, 400, "must be 1-128"},
		{"a giant type", "POST", "hooks/identify", `{"provider_types":["` + strings.Repeat("w", 129) + `"]}`, 400, "must be 1-128"},
		{"both forms", "POST", "hooks/identify", `{"provider_type":"webhook","provider_types":["webhook"]}`, 400, "not both"},
		{"types not a list", "POST", "hooks/identify", `{"provider_types":"webhook"}`, 400, CodeInvalidActivity},
		{"a header name that is not a token", "POST", "hooks/identify", `{"headers":[{"name":"X Id","value":"1"}]}`, 400, "not an HTTP field name"},
		{"an empty header name", "POST", "hooks/identify", `{"headers":[{"name":"","value":"1"}]}`, 400, "not an HTTP field name"},
		{"a header value that splits a request", "POST", "hooks/identify", `{"headers":[{"name":"X-Id","value":"1\r\nX-Evil: 2"}]}`, 400, "CR, LF or NUL"},
		{"an object's value that splits a request", "POST", "hooks/identify", `{"headers":{"X-Id":"1\nX-Evil: 2"}}`, 400, "CR, LF or NUL"},
		{"a header entry with an unknown field", "POST", "hooks/identify", `{"headers":[{"name":"X-Id","value":"1","values":["2"]}]}`, 400, "unknown field"},
		{"a header value not a string", "POST", "hooks/identify", `{"headers":{"X-Id":1}}`, 400, "must be a string"},
		{"headers neither list nor object", "POST", "hooks/identify", `{"headers":"X-Id: 1"}`, 400, "want a list"},
		{"thousands of headers: the body limit", "POST", "hooks/identify", `{"provider_types":["webhook"],"headers":` + manyHeaders + `}`, 413, CodeTooLarge},
		{"a giant header name: the body limit", "POST", "hooks/identify", `{"headers":[{"name":"` + strings.Repeat("X", 9000) + `","value":"1"}]}`, 413, CodeTooLarge},
		{"hints of too many types", "GET", "hooks/identify?provider_types=" + types(maxIdentifyTypes+1), ``, 400, "at most 64"},
		{"hints of an empty type", "GET", "hooks/identify?provider_types=", ``, 400, "must be 1-128"},
		{"hints of a type twice", "GET", "hooks/identify?provider_types=webhook,webhook", ``, 400, "asked twice"},
	} {
		t.Run(strings.TrimSpace(tc.name), func(t *testing.T) {
			status, body := call(tc.method, tc.path, tc.body)
			if status != tc.status || !strings.Contains(body, tc.says) {
				t.Fatalf("got %d %s, want %d saying %s", status, body, tc.status, tc.says)
			}
			if status == 400 && !strings.Contains(body, `"code":"`+CodeInvalidActivity+`"`) {
				t.Fatalf("a bad request without its code: %s", body)
			}
		})
	}
}

// FuzzParseHeaders: whatever the bytes, parseHeaders either refuses them or returns
// headers a pack may be handed (field names, no CR, LF or NUL), and the list it returns
// reads back the same when sent as a list.
func FuzzParseHeaders(f *testing.F) {
	for _, s := range []string{`[{"name":"X-A","value":"1"},{"name":"x-a","value":"2"}]`, `{"X-A":"1","X-A":"2"}`, `null`, `[]`, `{}`,
		`[{"name":"a b","value":""}]`, `{"a":"\u0000"}`, `[{"name":"X","value":"\r"}]`, `"x"`, `[1]`, `{"a":1}`, ` [ ] `} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) {
			return // the request's decoder refuses it before parseHeaders sees it
		}
		got, err := parseHeaders(raw)
		if err != nil {
			return
		}
		for _, h := range got {
			if !httpguts.ValidHeaderFieldName(h.Name) || strings.ContainsAny(h.Value, "\r\n\x00") {
				t.Fatalf("accepted header %q: %q", h.Name, h.Value)
			}
		}
		list, err := json.Marshal(got)
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseHeaders(list)
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Fatalf("%s read back as %v, %v; want %v", list, again, err, got)
		}
	})
}
