package dispatcher

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/packhost/packhost/runtime"
)

// The identify endpoint answers, as the seed host does, which provider instance an
// inbound webhook addresses, for each provider type the caller asks about:
//
//	POST …/identify {"provider_types":["a","b"],"headers":[{"name","value"}],"body":…}
//	→ {"provider_types":{"a":{"outcome":"Identified",…},"b":{"outcome":"Unsupported"}}}
//	GET  …/identify?provider_types=a,b
//	→ {"provider_types":{"a":{"provider_type":"a","headers":[…],…},"b":null}}
//
// The single-type form that came first stays: a body with "provider_type" (or none) is
// answered with one outcome, and GET without provider_types lists every hint. Headers
// may be the list above (order and repeated names kept) or, as in the single-type form,
// an object of names to values.

// maxIdentifyTypes bounds the provider types one request may ask about: each may cost a
// guest call per pack, all under one deadline, and a revision's packs seldom bind more
// than a few.
const maxIdentifyTypes = 64

// identifyRequest is the body of POST …/identify.
type identifyRequest struct {
	// ProviderTypes asks for the map form; nil (absent or null) for the single form.
	ProviderTypes []string `json:"provider_types"`
	// ProviderType is the single form's one type; empty asks every pack.
	ProviderType string          `json:"provider_type"`
	Headers      json.RawMessage `json:"headers"`
	Body         json.RawMessage `json:"body"`
}

// identityJSON is one provider type's outcome as answered.
type identityJSON struct {
	Outcome string `json:"outcome"`
	runtime.Identity
	// Error says why Pack could not answer, when the outcome is Error.
	Error *errorDetail `json:"error,omitempty"`
}

func (s *Server) identify(w http.ResponseWriter, r *http.Request) {
	var req identifyRequest
	c, ok := s.admitProvider(w, r, "identify request", &req)
	if !ok {
		return
	}
	defer c.release()
	headers, err := parseHeaders(req.Headers)
	if err != nil {
		writeError(w, http.StatusBadRequest, CodeInvalidActivity, "identify request: "+err.Error())
		return
	}
	single := req.ProviderTypes == nil
	types := []string{req.ProviderType}
	if !single {
		if req.ProviderType != "" {
			writeError(w, http.StatusBadRequest, CodeInvalidActivity, "identify request: give provider_type or provider_types, not both")
			return
		}
		types = req.ProviderTypes
		if err := checkProviderTypes(types); err != nil {
			writeError(w, http.StatusBadRequest, CodeInvalidActivity, "identify request: "+err.Error())
			return
		}
	}
	ids, err := c.rt.Identify(r.Context(), runtime.IdentifyRequest{ProviderTypes: types, Headers: headers, Body: req.Body}, r.URL.Query().Get("scoped") == "true")
	if err != nil {
		writeRuntimeError(w, err)
		return
	}
	if single {
		id := ids[req.ProviderType]
		if id.Outcome == runtime.Errored {
			// As before the map form: a pack's failure is the answer's status when no
			// pack identified the request.
			writeRuntimeError(w, id.Err)
			return
		}
		writeJSON(w, c.name, identityOf(id))
		return
	}
	out := make(map[string]identityJSON, len(ids))
	for t, id := range ids {
		out[t] = identityOf(id)
	}
	writeJSON(w, c.name, map[string]any{"provider_types": out})
}

func identityOf(id runtime.Identity) identityJSON {
	out := identityJSON{Outcome: id.OutcomeName(), Identity: id}
	if id.Err != nil {
		_, code := statusOf(id.Err)
		out.Error = &errorDetail{Code: code, Message: id.Err.Error()}
	}
	return out
}

func (s *Server) describe(w http.ResponseWriter, r *http.Request) {
	var types []string
	for _, v := range r.URL.Query()["provider_types"] {
		types = append(types, strings.Split(v, ",")...)
	}
	c, ok := s.admitProvider(w, r, "", nil)
	if !ok {
		return
	}
	defer c.release()
	if types != nil {
		if err := checkProviderTypes(types); err != nil {
			writeError(w, http.StatusBadRequest, CodeInvalidActivity, "provider_types: "+err.Error())
			return
		}
	}
	hints, err := c.rt.IdentifyHints(r.Context(), types)
	if err != nil {
		writeRuntimeError(w, err)
		return
	}
	if types == nil {
		if hints == nil {
			hints = []runtime.Hint{}
		}
		writeJSON(w, c.name, map[string]any{"hints": hints})
		return
	}
	out := make(map[string]*runtime.Hint, len(types))
	for _, t := range types {
		out[t] = nil // no pack has a hint for it
	}
	for i := range hints {
		out[hints[i].ProviderType] = &hints[i]
	}
	writeJSON(w, c.name, map[string]any{"provider_types": out})
}

// checkProviderTypes refuses a list of provider types to ask about that is empty, too
// long, repeats a type or names one no manifest could declare.
func checkProviderTypes(types []string) error {
	switch {
	case len(types) == 0:
		return errors.New("provider_types is empty")
	case len(types) > maxIdentifyTypes:
		return fmt.Errorf("%d provider types, at most %d a request", len(types), maxIdentifyTypes)
	}
	for i, t := range types {
		if !runtime.ValidProviderType(t) {
			return fmt.Errorf("provider type %q must be 1-128 letters, digits, '.', '_' or '-'", t)
		}
		if slices.Contains(types[:i], t) {
			return fmt.Errorf("provider type %q is asked twice", t)
		}
	}
	return nil
}

// parseHeaders reads an identify request's headers: a list of {"name","value"} in the
// order sent, or an object of names to values (in its order). Names must be HTTP field
// names and values must not hold CR, LF or NUL, so a pack that passes a header on
// cannot be made to split a request. How many there are, and how long, is bounded by
// the request's body limit only.
func parseHeaders(raw json.RawMessage) ([]runtime.Header, error) {
	raw = bytes.TrimSpace(raw)
	var out []runtime.Header
	switch {
	case len(raw) == 0 || string(raw) == "null":
		return nil, nil
	case raw[0] == '[':
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&out); err != nil {
			return nil, fmt.Errorf("headers: want a list of {\"name\",\"value\"}: %v", err)
		}
	case raw[0] == '{':
		dec := json.NewDecoder(bytes.NewReader(raw))
		if _, err := dec.Token(); err != nil {
			return nil, fmt.Errorf("headers: %v", err)
		}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return nil, fmt.Errorf("headers: %v", err)
			}
			var v string
			if err := dec.Decode(&v); err != nil {
				return nil, fmt.Errorf("headers: the value of %q must be a string: %v", tok, err)
			}
			out = append(out, runtime.Header{Name: tok.(string), Value: v})
		}
		if _, err := dec.Token(); err != nil && err != io.EOF {
			return nil, fmt.Errorf("headers: %v", err)
		}
	default:
		return nil, errors.New("headers: want a list of {\"name\",\"value\"} or an object")
	}
	for _, h := range out {
		if !httpguts.ValidHeaderFieldName(h.Name) {
			return nil, fmt.Errorf("header name %q is not an HTTP field name", h.Name)
		}
		if strings.ContainsAny(h.Value, "\r\n\x00") {
			return nil, fmt.Errorf("the value of header %s holds CR, LF or NUL", h.Name)
		}
	}
	return out, nil
}
