package source_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	packhostv1alpha1 "github.com/packhost/packhost/api/v1alpha1"
)

// The cache serves a pack only to the source that gave it, in the namespace that
// fetched it: pinning a digest someone else fetched gets nothing without fetching.
func TestCacheServesOnlyTheSourceThatGaveIt(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path == "/private.wasm" {
			w.Write(module)
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	ctx := context.Background()
	f := fetcher(t)
	pack := func(path string) packhostv1alpha1.Pack {
		return packhostv1alpha1.Pack{Name: "bot", URL: srv.URL + path, SHA256: sum(module)}
	}
	if _, err := f.Fetch(ctx, "owner", pack("/private.wasm"), nil, ""); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, namespace string
		pack            packhostv1alpha1.Pack
		fetches         bool
		ok              bool
	}{
		{"the same source again", "owner", pack("/private.wasm"), false, true},
		{"the same url from another namespace", "thief", pack("/private.wasm"), true, true},
		{"a url that does not serve it", "thief", pack("/absent.wasm"), true, false},
		{"a ConfigMap that does not exist", "thief", packhostv1alpha1.Pack{Name: "bot", SHA256: sum(module),
			ConfigMapRef: &packhostv1alpha1.ConfigMapKeyReference{Name: "absent", Key: "p.wasm"}}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.pack.ConfigMapRef != nil && f.Reader == nil {
				f.Reader = absentReader{}
			}
			before := hits.Load()
			got, err := f.Fetch(ctx, tc.namespace, tc.pack, nil, "")
			if fetched := hits.Load() != before; fetched != tc.fetches {
				t.Errorf("fetched from the source: %v, want %v", fetched, tc.fetches)
			}
			if (err == nil) != tc.ok {
				t.Fatalf("got %v, %v; want success %v", got != nil, err, tc.ok)
			}
		})
	}
}

// absentReader finds nothing, as an API server without the object would.
type absentReader struct{}

func (absentReader) Get(_ context.Context, key client.ObjectKey, _ client.Object, _ ...client.GetOption) error {
	return apierrors.NewNotFound(schema.GroupResource{Resource: "configmaps"}, key.Name)
}

func (absentReader) List(context.Context, client.ObjectList, ...client.ListOption) error { return nil }
