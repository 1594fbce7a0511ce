package source

import (
	"errors"
	"fmt"
)

// Errors a caller branches on (errors.Is) to pick a Revision's failure reason. Every
// error Fetch returns wraps exactly one of ErrSourceUnreachable, ErrInvalidSource and
// ErrDigestMismatch; ErrEgressDenied and ErrSourceTooLarge are kinds of ErrInvalidSource,
// because trying again without a change (of the source, or of the operator's allowlist)
// gives the same answer.
var (
	// ErrSourceUnreachable: the source could not be read (network, missing object,
	// registry, an HTTP status other than 200). Another try may succeed.
	ErrSourceUnreachable = errors.New("source unreachable")
	// ErrDigestMismatch: the bytes do not have the sha256 the Revision pins.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrInvalidSource: the source is malformed (bad image reference, no wasm layer) or
	// cannot be used as it is.
	ErrInvalidSource = errors.New("invalid source")
	// ErrEgressDenied: the source, or a redirect from it, leads to an address the egress
	// policy refuses, or a redirect went from https to http.
	ErrEgressDenied error = &classError{"blocked by egress policy", ErrInvalidSource}
	// ErrSourceTooLarge: a manifest, index or pack is larger than its limit.
	ErrSourceTooLarge error = &classError{"source too large", ErrInvalidSource}
)

// classError is a class of failure that is also a kind of a broader one.
type classError struct {
	msg    string
	parent error
}

func (e *classError) Error() string { return e.msg }
func (e *classError) Unwrap() error { return e.parent }

// Error is a failed fetch of one source. Its message names the source and the class of
// the failure ("fetch url https://example.com/p.wasm: HTTP 404") and never anything the
// source sent: no response body, no status text, no digest of bytes nobody pinned.
type Error struct {
	// Source is the kind and the location as the Revision names it ("url https://…",
	// "image registry/repo:tag"), with any password in a URL redacted.
	Source string
	// Detail is the class of failure in words ("connection failed", "HTTP 404").
	Detail string
	// Class is one of the Err… values above; errors.Is sees it.
	Class error
	// retry says whether another try right away may succeed.
	retry bool
}

func (e *Error) Error() string { return fmt.Sprintf("fetch %s: %s", e.Source, e.Detail) }

// Unwrap returns the class, so errors.Is(err, ErrEgressDenied) and the like work.
func (e *Error) Unwrap() error { return e.Class }

// failure is an Error whose source is filled in by the caller.
func failure(class error, retry bool, format string, args ...any) *Error {
	return &Error{Class: class, retry: retry, Detail: fmt.Sprintf(format, args...)}
}
