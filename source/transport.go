package source

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Bounds of one try of a network source.
const (
	// tryTimeout bounds one try: connect, TLS, redirects, headers and the whole body.
	tryTimeout = 30 * time.Second
	// dialTimeout bounds one connect, so an address that drops packets fails fast.
	dialTimeout = 5 * time.Second
	// dialKeepAlive is the TCP keep-alive period of source connections.
	dialKeepAlive = 30 * time.Second
	// tlsHandshakeTimeout bounds the TLS handshake.
	tlsHandshakeTimeout = 10 * time.Second
	// maxRedirects is how many redirects a url source may take.
	maxRedirects = 5
)

// tryState is what one try of a network source learned on the way, for failures that
// the HTTP and registry clients may not wrap: a refused address, a body past its limit,
// an https→http redirect. It travels in the request's context.
type tryState struct {
	// blobs says every body is a pack (url sources), not a registry manifest.
	blobs bool
	mu    sync.Mutex
	fault *Error
}

type tryKey struct{}

func withTry(ctx context.Context, t *tryState) context.Context {
	return context.WithValue(ctx, tryKey{}, t)
}

// noteFault records the first policy or size fault of the try that ctx belongs to.
func noteFault(ctx context.Context, e *Error) {
	t, _ := ctx.Value(tryKey{}).(*tryState)
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fault == nil {
		t.fault = e
	}
}

func (t *tryState) recorded() *Error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.fault
}

// newTransport returns the one HTTP transport every url and image fetch uses: no proxy
// (the policy judges the address connected to, which a proxy would hide), connections
// only where the policy allows, bounded handshakes, and every response body cut off at
// its limit.
func newTransport(p *EgressPolicy, roots *x509.CertPool) http.RoundTripper {
	return &guard{next: &http.Transport{
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		Proxy:                 nil,
		DialContext:           p.dialer(),
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   tlsHandshakeTimeout,
		ResponseHeaderTimeout: tryTimeout,
		MaxIdleConns:          32,
		IdleConnTimeout:       90 * time.Second,
	}}
}

// guard refuses https→http redirects and bounds response bodies.
type guard struct{ next http.RoundTripper }

var errDowngrade = errors.New("redirect from https to http refused")

func (g *guard) RoundTrip(req *http.Request) (*http.Response, error) {
	if prev := req.Response; prev != nil && prev.Request != nil && prev.Request.URL.Scheme == "https" && req.URL.Scheme != "https" {
		noteFault(req.Context(), failure(ErrEgressDenied, false, "redirect from https to http refused"))
		return nil, errDowngrade
	}
	resp, err := g.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	limit, what := bodyLimit(req)
	if req.Method != http.MethodHead && resp.ContentLength > limit {
		resp.Body.Close()
		e := tooLarge(what, limit)
		noteFault(req.Context(), e)
		return nil, e
	}
	resp.Body = &limitedBody{rc: resp.Body, left: limit, ctx: req.Context(), what: what, limit: limit}
	return resp, nil
}

func tooLarge(what string, limit int64) *Error {
	return failure(ErrSourceTooLarge, false, "%s larger than %d bytes", what, limit)
}

// bodyLimit is the most bytes a response to req may have: a pack for url sources and
// registry blobs (also when a blob request was redirected to storage elsewhere), a
// manifest for everything else a registry answers.
func bodyLimit(req *http.Request) (int64, string) {
	if t, _ := req.Context().Value(tryKey{}).(*tryState); t != nil && t.blobs {
		return MaxPackBytes, "pack"
	}
	first := req
	for first.Response != nil && first.Response.Request != nil {
		first = first.Response.Request
	}
	if strings.Contains(first.URL.Path, "/blobs/") {
		return MaxPackBytes, "pack layer"
	}
	return MaxManifestBytes, "manifest"
}

// limitedBody fails the read that passes its limit, so nothing past it is read.
type limitedBody struct {
	rc    io.ReadCloser
	left  int64
	limit int64
	what  string
	ctx   context.Context
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		e := tooLarge(b.what, b.limit)
		noteFault(b.ctx, e)
		return 0, e
	}
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// classify turns the error of one try into an Error that names only its class.
func classify(ctx context.Context, t *tryState, err error, timeout time.Duration) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	if f := t.recorded(); f != nil {
		return f
	}
	// The registry client refuses redirects to private IP literals itself, before our
	// dialer sees them, with an error of no type of its own.
	if errors.Is(err, ErrEgressDenied) || errors.Is(err, errDowngrade) || strings.Contains(err.Error(), "SSRF protection:") {
		return failure(ErrEgressDenied, false, "blocked by egress policy")
	}
	if ctx.Err() != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return failure(ErrSourceUnreachable, false, "timed out after %s", timeout)
		}
		return failure(ErrSourceUnreachable, false, "canceled")
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		return httpStatus(terr.StatusCode)
	}
	var cve *tls.CertificateVerificationError
	if errors.As(err, &cve) {
		return failure(ErrSourceUnreachable, false, "TLS certificate not trusted")
	}
	if errors.Is(err, errTooManyRedirects) {
		return failure(ErrSourceUnreachable, false, "more than %d redirects", maxRedirects)
	}
	return failure(ErrSourceUnreachable, true, "connection failed")
}

// httpStatus names an unexpected status by its code alone: never the server's status
// text or body. 5xx and 429 may pass on another try.
func httpStatus(code int) *Error {
	return failure(ErrSourceUnreachable, code >= 500 || code == http.StatusTooManyRequests, "HTTP %d", code)
}

var errTooManyRedirects = errors.New("too many redirects")

// checkRedirect bounds a url source's redirects; guard refuses https→http, and the
// dialer judges where each one connects.
func checkRedirect(_ *http.Request, via []*http.Request) error {
	if len(via) > maxRedirects {
		return errTooManyRedirects
	}
	return nil
}
