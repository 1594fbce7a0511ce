package dispatcher

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

// Callers are hostile until authenticated (DESIGN.md, "Trust model"): nothing the
// dispatcher answers before a token is accepted may depend on whether the tenant
// exists or on the token. So an unknown tenant, a missing or malformed Authorization
// header and a token that is not the tenant's all get the same 401 with the same body
// and headers; the work done is the same too: a presented token is hashed with
// SHA-256 and compared, in constant time, with the hashes of the tenant's tokens, or
// with one stand-in hash when there is no such tenant. Hashing first makes the
// comparison's time independent of the presented and the accepted tokens' lengths,
// which subtle.ConstantTimeCompare alone is not (it returns at once on a length
// mismatch). What remains is a map lookup, and one comparison per token the tenant
// has: the tenant's configuration, not its existence.

// unauthenticatedMessage is the one message every refused caller gets.
const unauthenticatedMessage = "send Authorization: Bearer <token> with a token from the tenant's auth Secret"

// tokenHash is the SHA-256 of an accepted token and the caller it names.
type tokenHash struct {
	sum    [sha256.Size]byte
	caller string
}

// noTenant stands in for a tenant that does not exist, so that a request naming one
// hashes and compares as much as one naming a tenant with a single token.
var noTenant = &TenantConfig{hashes: []tokenHash{{sum: sha256.Sum256([]byte("packhost: no such tenant"))}}}

// authenticate finds the tenant and checks the caller's bearer token. It writes the
// error response and returns nil when the request may not go on.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, ns, name string) (*TenantConfig, *Table, string) {
	cfg, table := s.Router.Tenant(ns, name)
	known := cfg != nil
	if !known {
		cfg = noTenant
	}
	token, bearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !bearer {
		token = "" // still hashed and compared: a missing header costs what a wrong one does
	}
	caller, ok := cfg.Caller(token)
	if !known || !ok || token == "" {
		s.Metrics.unauthenticated()
		w.Header().Set("WWW-Authenticate", `Bearer realm="packhost"`)
		writeError(w, http.StatusUnauthorized, CodeUnauthenticated, unauthenticatedMessage)
		return nil, nil, ""
	}
	return cfg, table, caller
}

// Caller returns the caller a bearer token belongs to. It compares the token's SHA-256
// with every accepted token's, in constant time, so that how long it takes depends on
// neither token's length nor on which one matched.
func (t *TenantConfig) Caller(token string) (string, bool) {
	hashes := t.hashes
	if hashes == nil { // a config that was not published through a Router
		hashes = hashTokens(t.Tokens)
	}
	if len(hashes) == 0 {
		// A tenant without tokens compares as much as an unknown one: zero comparisons
		// would answer faster and tell that it exists.
		hashes = noTenant.hashes
	}
	sum := sha256.Sum256([]byte(token))
	found, caller := 0, ""
	for _, h := range hashes {
		if subtle.ConstantTimeCompare(h.sum[:], sum[:]) == 1 {
			found, caller = 1, h.caller
		}
	}
	return caller, found == 1
}

func hashTokens(tokens map[string]string) []tokenHash {
	out := make([]tokenHash, 0, len(tokens))
	for tok, caller := range tokens {
		if tok != "" {
			out = append(out, tokenHash{sum: sha256.Sum256([]byte(tok)), caller: caller})
		}
	}
	return out
}
