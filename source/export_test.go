package source

import (
	"crypto/x509"
	"time"
)

// SetRootCAs makes f trust pool instead of the system's roots (for httptest TLS servers).
func SetRootCAs(f *Fetcher, pool *x509.CertPool) { f.rootCAs = pool }

// SetTryTimeout shortens one try of f, so a test of the per-try bound runs fast.
func SetTryTimeout(f *Fetcher, d time.Duration) { f.tryTimeout = d }
