package dispatcher

import (
	"crypto/subtle"
	"fmt"
	"net/http"
	"strings"
)

// authenticate finds the tenant and checks the caller's bearer token. It writes the
// error response and returns nil when the request may not go on.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, ns, name string) (*TenantConfig, *Table, string) {
	cfg, table := s.Router.Tenant(ns, name)
	if cfg == nil {
		writeError(w, http.StatusNotFound, CodeUnknownTenant, fmt.Sprintf("no tenant %s/%s", ns, name))
		return nil, nil, ""
	}
	auth := r.Header.Get("Authorization")
	token, ok := strings.CutPrefix(auth, "Bearer ")
	if auth == "" || !ok || token == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="packhost"`)
		writeError(w, http.StatusUnauthorized, CodeUnauthenticated, "send Authorization: Bearer <token> with a token from the tenant's auth Secret")
		return nil, nil, ""
	}
	caller, ok := cfg.Caller(token)
	if !ok {
		writeError(w, http.StatusForbidden, CodeForbidden, fmt.Sprintf("the token is not one of tenant %s/%s's", ns, name))
		return nil, nil, ""
	}
	return cfg, table, caller
}

// Caller returns the caller a bearer token belongs to, comparing in constant time.
func (t *TenantConfig) Caller(token string) (string, bool) {
	found, caller := 0, ""
	for tok, name := range t.Tokens {
		if subtle.ConstantTimeCompare([]byte(tok), []byte(token)) == 1 {
			found, caller = 1, name
		}
	}
	return caller, found == 1
}
