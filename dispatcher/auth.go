package dispatcher

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
	"time"
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

// A refused caller is answered after RefusalDelay, holding a parked goroutine and no
// processor: a client flooding the dispatcher with requests it cannot authenticate
// (made-up tenants, guessed tokens) then gets a few answers a second per connection
// instead of taking a core from the tenants, and guessing tokens slows down as much.
// At most maxDelayedRefusals wait at once; past that a refusal is answered at once and
// closes its connection, so the delay never holds unbounded goroutines and an attacker
// with many connections pays for a new one at every refusal. (A caller that hangs up
// is noticed only once its body was read, which a refusal does not do: it holds its
// place for the delay, which is why the delay is short.)
const (
	defaultRefusalDelay = 250 * time.Millisecond
	maxDelayedRefusals  = 1024
)

// delayRefusal waits RefusalDelay before a refusal is answered, when one of the delayed
// refusals' places is free; otherwise it marks the connection to be closed.
func (s *Server) delayRefusal(w http.ResponseWriter, r *http.Request) {
	delay := s.RefusalDelay
	if delay == 0 {
		delay = defaultRefusalDelay
	}
	if delay < 0 {
		return
	}
	select {
	case s.refusals <- struct{}{}:
	default:
		w.Header().Set("Connection", "close") // answered at once; the client must connect again
		return
	}
	defer func() { <-s.refusals }()
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
}

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
		s.delayRefusal(w, r)
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
