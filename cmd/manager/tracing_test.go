package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	packhostv1alpha1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/internal/testenv"
)

// A tracing setting the manager cannot honour stops it before it starts, naming the
// variable, rather than leaving tracing silently off.
func TestRunRefusesBadTracingConfig(t *testing.T) {
	testenv.Require(t, env)
	t.Setenv("OTEL_TRACES_EXPORTER", "zipkin")
	err := run(context.Background(), env.Config, options{cacheDir: t.TempDir(), metricsAddr: "0", probeAddr: "0"}, zap.New())
	if err == nil || !strings.Contains(err.Error(), "OTEL_TRACES_EXPORTER") {
		t.Fatalf("run: %v, want an error naming OTEL_TRACES_EXPORTER", err)
	}
}

// With OTEL_EXPORTER_OTLP_ENDPOINT set, the manager records its spans (here a
// revision's pack fetch) and flushes them to the collector when it stops.
func TestManagerExportsTracesOnExit(t *testing.T) {
	testenv.Require(t, env)
	var mu sync.Mutex
	var exports [][]byte
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/v1/traces" {
			mu.Lock()
			exports = append(exports, b)
			mu.Unlock()
		}
	}))
	defer collector.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.URL)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "3600000") // nothing is sent before the exit
	ns := env.Namespace(t, "traced")
	// The dispatcher stays off: its metrics are registered once per process, and
	// another test of this process runs it; its spans are tested in ./dispatcher.
	o := options{metricsAddr: "0", dispatcherAddr: "0", probeAddr: "0", cacheDir: t.TempDir(), gracefulShutdown: 5 * time.Second,
		watchNamespaces: []string{ns}, skipNameValidation: true}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, env.Config, o, zap.New()) }()
	pack := packs.WithManifest(packs.Synthetic(8<<10), `{"abi":1,"pack_id":"small","version":"1","flows":[{"id":"f","entry":true}]}`)
	for _, obj := range []client.Object{
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "packs", Namespace: ns}, BinaryData: map[string][]byte{"ok.wasm": pack}},
		&packhostv1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "acme", Namespace: ns}},
		&packhostv1alpha1.Revision{ObjectMeta: metav1.ObjectMeta{Name: "traced-rev", Namespace: ns}, Spec: packhostv1alpha1.RevisionSpec{
			TenantRef: packhostv1alpha1.LocalObjectReference{Name: "acme"},
			Packs:     []packhostv1alpha1.Pack{{Name: "main", ConfigMapRef: &packhostv1alpha1.ConfigMapKeyReference{Name: "packs", Key: "ok.wasm"}}},
			State:     packhostv1alpha1.RevisionState{Shards: 1},
		}},
	} {
		if err := env.Client.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	rev := &packhostv1alpha1.Revision{}
	for deadline := time.Now().Add(90 * time.Second); rev.Status.Phase != packhostv1alpha1.RevisionReady; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the revision is not Ready: %+v", rev.Status)
		}
		_ = env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "traced-rev"}, rev)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("manager stopped with an error: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("manager did not stop within 30s of its context ending")
	}
	mu.Lock()
	defer mu.Unlock()
	all := bytes.Join(exports, nil)
	if !bytes.Contains(all, []byte("packhost.pack_fetch")) || !bytes.Contains(all, []byte("traced-rev")) {
		t.Errorf("the collector got %d exports without the revision's pack fetch span", len(exports))
	}
}
