package source

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/url"
)

// fromURL fetches a url source, hashing the body as it streams in and giving up as soon
// as it passes MaxPackBytes. It returns the bytes and their sha256 in hex.
func (f *Fetcher) fromURL(ctx context.Context, namespace, rawURL string) ([]byte, string, error) {
	src := describeURL(rawURL)
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, "", &Error{Source: src, Detail: "not an absolute http or https URL", Class: ErrInvalidSource}
	}
	hc := &http.Client{Transport: f.transport(), CheckRedirect: checkRedirect}
	var (
		b      []byte
		digest string
	)
	err = f.try(ctx, namespace+"\x00"+src, src, true, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
		if err != nil {
			return failure(ErrInvalidSource, false, "not a valid request URL")
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return httpStatus(resp.StatusCode)
		}
		h := sha256.New()
		if b, err = io.ReadAll(io.TeeReader(resp.Body, h)); err != nil {
			return err
		}
		digest = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return b, digest, nil
}

// describeURL names a url source in messages, with any password redacted.
func describeURL(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return "url " + u.Redacted()
	}
	return "url " + raw
}
