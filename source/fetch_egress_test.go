package source_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"

	packhostv1alpha1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/source"
)

// counting serves h and counts the requests it got.
func counting(h http.Handler) (*httptest.Server, *atomic.Int32) {
	var n atomic.Int32
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h.ServeHTTP(w, r)
	})), &n
}

// on127002 serves h on 127.0.0.2: loopback too, but outside the tests' allowlist
// (127.0.0.1/32), so it stands for an internal service a source must not reach.
func on127002(t *testing.T, h http.Handler) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.2: %v", err)
	}
	var n atomic.Int32
	srv := &httptest.Server{Listener: l, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h.ServeHTTP(w, r)
	})}}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &n
}

func newRegistry() http.Handler { return registry.New(registry.Logger(log.New(io.Discard, "", 0))) }

// Without an allowlist a source on 127.0.0.1 (in any spelling) is refused at connect
// time, url and image alike, and the server never sees a request; allowlisting
// 127.0.0.1 explicitly lets the same fetch through.
func TestEgressRefusesLoopbackUnlessAllowed(t *testing.T) {
	files, fileHits := counting(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(module) }))
	defer files.Close()
	reg, regHits := counting(newRegistry())
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	_, port, _ := net.SplitHostPort(host)
	image, _ := pushArtifact(t, host, "packs/bot", "v1", module)
	regHits.Store(0)
	_, filePort, _ := net.SplitHostPort(strings.TrimPrefix(files.URL, "http://"))

	for _, tc := range []struct {
		name string
		pack packhostv1alpha1.Pack
		hits *atomic.Int32
		// never: refused even with 127.0.0.1 allowed, for it is another address.
		never bool
	}{
		{"url", packhostv1alpha1.Pack{Name: "bot", URL: files.URL + "/p.wasm", SHA256: sum(module)}, fileHits, false},
		{"url by localhost", packhostv1alpha1.Pack{Name: "bot", URL: "http://localhost:" + filePort + "/p.wasm", SHA256: sum(module)}, fileHits, false},
		{"url by mapped IPv6", packhostv1alpha1.Pack{Name: "bot", URL: "http://[::ffff:127.0.0.1]:" + filePort + "/p.wasm", SHA256: sum(module)}, fileHits, false},
		{"url by 0.0.0.0", packhostv1alpha1.Pack{Name: "bot", URL: "http://0.0.0.0:" + filePort + "/p.wasm", SHA256: sum(module)}, fileHits, true},
		{"image", packhostv1alpha1.Pack{Name: "bot", Image: image}, regHits, false},
		{"image by localhost", packhostv1alpha1.Pack{Name: "bot", Image: "localhost:" + port + "/packs/bot:v1"}, regHits, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &source.Fetcher{CacheDir: t.TempDir()}
			_, err := f.Fetch(context.Background(), "ns", tc.pack, nil, "")
			if !errors.Is(err, source.ErrEgressDenied) || !errors.Is(err, source.ErrInvalidSource) || !strings.HasSuffix(err.Error(), ": blocked by egress policy") {
				t.Fatalf("default policy: %v, want blocked by egress policy", err)
			}
			if n := tc.hits.Swap(0); n != 0 {
				t.Fatalf("default policy: the server got %d requests", n)
			}
			f = &source.Fetcher{CacheDir: t.TempDir(), Egress: policy(t, []string{"127.0.0.1/32", "::1/128"}, nil)}
			got, err := f.Fetch(context.Background(), "ns", tc.pack, nil, "")
			if tc.never {
				if !errors.Is(err, source.ErrEgressDenied) || tc.hits.Load() != 0 {
					t.Fatalf("with 127.0.0.1 allowed: %v, %d requests; want blocked", err, tc.hits.Load())
				}
				return
			}
			if err != nil || string(got.Bytes) != string(module) {
				t.Fatalf("with 127.0.0.1 allowed: %v", err)
			}
			tc.hits.Store(0)
		})
	}
	want := "fetch url " + files.URL + "/p.wasm: blocked by egress policy"
	if _, err := (&source.Fetcher{}).Fetch(context.Background(), "ns", packhostv1alpha1.Pack{Name: "bot", URL: files.URL + "/p.wasm", SHA256: sum(module)}, nil, ""); err == nil || err.Error() != want {
		t.Errorf("message %v, want %q", err, want)
	}
}

// An allowed host name may resolve to any address; the same address by another name is
// still refused.
func TestEgressAllowsHostNames(t *testing.T) {
	files, hits := counting(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(module) }))
	defer files.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(files.URL, "http://"))
	f := &source.Fetcher{Egress: policy(t, []string{"localhost"}, nil)}
	if _, err := f.Fetch(context.Background(), "ns", packhostv1alpha1.Pack{Name: "bot", URL: "http://localhost:" + port + "/p.wasm", SHA256: sum(module)}, nil, ""); err != nil {
		t.Fatalf("allowed host name: %v", err)
	}
	if _, err := f.Fetch(context.Background(), "ns", packhostv1alpha1.Pack{Name: "bot", URL: files.URL + "/p.wasm", SHA256: sum(module)}, nil, ""); !errors.Is(err, source.ErrEgressDenied) {
		t.Fatalf("the same address by IP: %v, want blocked", err)
	}
	if hits.Load() != 1 {
		t.Fatalf("the server got %d requests, want 1", hits.Load())
	}
}

// A redirect is judged where it connects: an allowed source cannot bounce the manager
// to an internal address (url, or a registry's blob redirect), and never from https to
// http. The internal body and its digest appear nowhere.
func TestEgressRedirects(t *testing.T) {
	internalBody := []byte("internal secret")
	internal, internalHits := on127002(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(internalBody) }))
	plain, plainHits := counting(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(module) }))
	defer plain.Close()

	toInternal, _ := counting(http.RedirectHandler(internal.URL+"/latest/meta-data", http.StatusFound))
	defer toInternal.Close()
	tlsToPlain := httptest.NewTLSServer(http.RedirectHandler(plain.URL+"/p.wasm", http.StatusFound))
	defer tlsToPlain.Close()
	tlsOK := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(module) }))
	defer tlsOK.Close()
	// The registry client refuses a redirect to a private IP literal itself; one to a
	// name is judged by the dialer, on the address the name resolves to. This registry
	// is on 127.0.0.2 (allowed for it) and sends blobs to localhost (not allowed).
	reg := newRegistry()
	var blobTarget atomic.Value
	blobRedirect := func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") && r.Method == http.MethodGet {
			http.Redirect(w, r, blobTarget.Load().(string), http.StatusTemporaryRedirect)
			return
		}
		reg.ServeHTTP(w, r)
	}
	blobToInternal, _ := on127002(t, http.HandlerFunc(blobRedirect))
	image, _ := pushArtifact(t, strings.TrimPrefix(blobToInternal.URL, "http://"), "packs/bot", "v1", module)
	_, plainPort, _ := net.SplitHostPort(strings.TrimPrefix(plain.URL, "http://"))

	roots := x509.NewCertPool()
	roots.AddCert(tlsToPlain.Certificate())
	roots.AddCert(tlsOK.Certificate())
	for _, tc := range []struct {
		name    string
		pack    packhostv1alpha1.Pack
		blobTo  string
		allow   string
		wantErr error
		detail  string
	}{
		{"url to an internal address", packhostv1alpha1.Pack{Name: "bot", URL: toInternal.URL + "/p.wasm", SHA256: sum(module)}, "", "", source.ErrEgressDenied, "blocked by egress policy"},
		{"https to http", packhostv1alpha1.Pack{Name: "bot", URL: tlsToPlain.URL + "/p.wasm", SHA256: sum(module)}, "", "", source.ErrEgressDenied, "redirect from https to http refused"},
		{"image blob to an internal name", packhostv1alpha1.Pack{Name: "bot", Image: image}, "http://localhost:" + plainPort + "/blob", "127.0.0.2/32", source.ErrEgressDenied, "blocked by egress policy"},
		{"image blob to an internal address", packhostv1alpha1.Pack{Name: "bot", Image: image}, "http://127.0.0.1:" + plainPort + "/blob", "127.0.0.2/32", source.ErrEgressDenied, "blocked by egress policy"},
		{"https without a redirect", packhostv1alpha1.Pack{Name: "bot", URL: tlsOK.URL + "/p.wasm", SHA256: sum(module)}, "", "", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := fetcher(t)
			if tc.allow != "" {
				f.Egress = policy(t, []string{tc.allow}, nil)
			}
			blobTarget.Store(tc.blobTo)
			source.SetRootCAs(f, roots)
			_, err := f.Fetch(context.Background(), "ns", tc.pack, nil, "")
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || !strings.HasSuffix(err.Error(), ": "+tc.detail) {
				t.Fatalf("%v, want %v ending %q", err, tc.wantErr, tc.detail)
			}
			if strings.Contains(err.Error(), string(internalBody)) || strings.Contains(err.Error(), sum(internalBody)) {
				t.Fatalf("%v tells of the internal body", err)
			}
		})
	}
	if internalHits.Load() != 0 || plainHits.Load() != 0 {
		t.Fatalf("redirects reached the internal server %d times and plain http %d times", internalHits.Load(), plainHits.Load())
	}
}

// Sizes are bounded as the bytes stream in: a pack past MaxPackBytes, a manifest past
// MaxManifestBytes, a layer that says it is too large (never downloaded).
func TestSizeLimits(t *testing.T) {
	big := func(n int64, announce bool) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			if announce {
				w.Header().Set("Content-Length", fmt.Sprint(n))
			} else {
				w.(http.Flusher).Flush() // chunked: no length to judge by
			}
			io.CopyN(w, zeros{}, n)
		}
	}
	reg := newRegistry()
	var blobHits atomic.Int32
	manifest := func(announce bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			switch {
			case strings.Contains(r.URL.Path, "/manifests/big"):
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				if announce {
					w.Header().Set("Content-Length", fmt.Sprint(source.MaxManifestBytes+1))
				}
				w.Write([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","x":"`))
				io.CopyN(w, spaces{}, source.MaxManifestBytes)
			case strings.Contains(r.URL.Path, "/manifests/hugelayer"):
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				fmt.Fprintf(w, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
"config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},
"layers":[{"mediaType":%q,"size":%d,"digest":"sha256:%s"}]}`, source.WasmLayerMediaType, source.MaxPackBytes+1, strings.Repeat("ab", 32))
			case strings.Contains(r.URL.Path, "/blobs/"):
				blobHits.Add(1)
				reg.ServeHTTP(w, r)
			default:
				reg.ServeHTTP(w, r)
			}
		}
	}
	for _, tc := range []struct {
		name    string
		handler http.Handler
		pack    func(base string) packhostv1alpha1.Pack
		detail  string
	}{
		{"url pack, announced", big(source.MaxPackBytes+1, true), func(b string) packhostv1alpha1.Pack {
			return packhostv1alpha1.Pack{Name: "bot", URL: b + "/p.wasm", SHA256: sum(module)}
		}, fmt.Sprintf("pack larger than %d bytes", source.MaxPackBytes)},
		{"url pack, streamed", big(source.MaxPackBytes+1, false), func(b string) packhostv1alpha1.Pack {
			return packhostv1alpha1.Pack{Name: "bot", URL: b + "/p.wasm", SHA256: sum(module)}
		}, fmt.Sprintf("pack larger than %d bytes", source.MaxPackBytes)},
		{"manifest, announced", manifest(true), func(b string) packhostv1alpha1.Pack {
			return packhostv1alpha1.Pack{Name: "bot", Image: strings.TrimPrefix(b, "http://") + "/packs/bot:big"}
		}, fmt.Sprintf("manifest larger than %d bytes", source.MaxManifestBytes)},
		{"manifest, streamed", manifest(false), func(b string) packhostv1alpha1.Pack {
			return packhostv1alpha1.Pack{Name: "bot", Image: strings.TrimPrefix(b, "http://") + "/packs/bot:big"}
		}, fmt.Sprintf("manifest larger than %d bytes", source.MaxManifestBytes)},
		{"layer", manifest(false), func(b string) packhostv1alpha1.Pack {
			return packhostv1alpha1.Pack{Name: "bot", Image: strings.TrimPrefix(b, "http://") + "/packs/bot:hugelayer"}
		}, fmt.Sprintf("pack layer larger than %d bytes", source.MaxPackBytes)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			_, err := fetcher(t).Fetch(context.Background(), "ns", tc.pack(srv.URL), nil, "")
			if !errors.Is(err, source.ErrSourceTooLarge) || !strings.HasSuffix(err.Error(), ": "+tc.detail) {
				t.Fatalf("%v, want too large ending %q", err, tc.detail)
			}
		})
	}
	if blobHits.Load() != 0 {
		t.Fatalf("a layer past the limit was downloaded (%d blob requests)", blobHits.Load())
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

type spaces struct{}

func (spaces) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = ' '
	}
	return len(p), nil
}

// Messages name the failure class and the source, never what the server said.
func TestFailureMessages(t *testing.T) {
	const secret = "internal detail: admin panel v2.3"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/forbidden":
			http.Error(w, secret, http.StatusForbidden)
		case "/teapot":
			w.WriteHeader(http.StatusTeapot)
			w.Write([]byte(secret))
		case "/slow":
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + closed.Addr().String() + "/p.wasm"
	closed.Close()
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, `{"errors":[{"code":"DENIED","message":%q}]}`, secret)
	}))
	defer reg.Close()

	for _, tc := range []struct {
		name, url, image string
		want             string
		class            error
	}{
		{name: "status", url: srv.URL + "/forbidden", want: "fetch url " + srv.URL + "/forbidden: HTTP 403", class: source.ErrSourceUnreachable},
		{name: "odd status", url: srv.URL + "/teapot", want: "fetch url " + srv.URL + "/teapot: HTTP 418", class: source.ErrSourceUnreachable},
		{name: "refused", url: refused, want: "fetch url " + refused + ": connection failed", class: source.ErrSourceUnreachable},
		{name: "per-try timeout", url: srv.URL + "/slow", want: "fetch url " + srv.URL + "/slow: timed out after 300ms", class: source.ErrSourceUnreachable},
		{name: "password redacted", url: strings.Replace(srv.URL, "http://", "http://user:hunter2@", 1) + "/missing", want: "fetch url " + strings.Replace(srv.URL, "http://", "http://user:xxxxx@", 1) + "/missing: HTTP 404", class: source.ErrSourceUnreachable},
		{name: "registry error body", image: strings.TrimPrefix(reg.URL, "http://") + "/packs/bot:v1", want: "fetch image " + strings.TrimPrefix(reg.URL, "http://") + "/packs/bot:v1: HTTP 403", class: source.ErrSourceUnreachable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := fetcher(t)
			source.SetTryTimeout(f, 300*time.Millisecond)
			start := time.Now()
			_, err := f.Fetch(context.Background(), "ns", packhostv1alpha1.Pack{Name: "bot", URL: tc.url, Image: tc.image, SHA256: sum(module)}, nil, "")
			if err == nil || err.Error() != tc.want || !errors.Is(err, tc.class) {
				t.Fatalf("got %v, want %q (%v)", err, tc.want, tc.class)
			}
			for _, leak := range []string{secret, "Forbidden", "refused", "hunter2", "DENIED"} {
				if strings.Contains(err.Error(), leak) {
					t.Fatalf("%v tells %q", err, leak)
				}
			}
			var fe *source.Error
			if !errors.As(err, &fe) || fe.Class != tc.class {
				t.Fatalf("%v is not a *source.Error of class %v", err, tc.class)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("took %s", d)
			}
		})
	}
}

// A source that failed is held back: the next Fetch answers at once with the same error
// and no request, until the hold ends; a success clears it.
func TestFailedSourceIsHeldBack(t *testing.T) {
	var up atomic.Bool
	srv, hits := counting(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() {
			http.NotFound(w, r)
			return
		}
		w.Write(module)
	}))
	defer srv.Close()
	now := time.Unix(1_000_000, 0)
	f := &source.Fetcher{Egress: local(t), Clock: func() time.Time { return now }}
	pack := packhostv1alpha1.Pack{Name: "bot", URL: srv.URL + "/p.wasm", SHA256: sum(module)}
	fetch := func() error {
		_, err := f.Fetch(context.Background(), "ns", pack, nil, "")
		return err
	}
	first := fetch()
	if !errors.Is(first, source.ErrSourceUnreachable) || hits.Load() != 1 {
		t.Fatalf("first fetch: %v, %d requests", first, hits.Load())
	}
	up.Store(true)
	now = now.Add(7 * time.Second) // under the first hold (10s -20%)
	if err := fetch(); err == nil || err.Error() != first.Error() || hits.Load() != 1 {
		t.Fatalf("held back: %v, %d requests; want the first error and no request", err, hits.Load())
	}
	// Another namespace's Revision naming the same URL is not held back by this one.
	if _, err := f.Fetch(context.Background(), "other", pack, nil, ""); err != nil || hits.Load() != 2 {
		t.Fatalf("other namespace: %v, %d requests", err, hits.Load())
	}
	now = now.Add(6 * time.Second) // past the first hold (10s +20%)
	if err := fetch(); err != nil || hits.Load() != 3 {
		t.Fatalf("after the hold: %v, %d requests", err, hits.Load())
	}
}
