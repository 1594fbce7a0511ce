package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/log/zap"

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

// With OTEL_EXPORTER_OTLP_ENDPOINT set, the manager exports the dispatcher's spans in
// the caller's trace, and flushes them when it stops.
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
	o := options{metricsAddr: "0", dispatcherAddr: freeAddr(t), probeAddr: freeAddr(t), cacheDir: t.TempDir(), gracefulShutdown: 5 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, env.Config, o, zap.New()) }()
	if err := waitOK(ctx, "http://"+o.dispatcherAddr+"/readyz", done); err != nil {
		t.Fatal(err)
	}
	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	req, _ := http.NewRequest(http.MethodPost, "http://"+o.dispatcherAddr+"/v1/namespaces/nowhere/tenants/nobody/activities", strings.NewReader(`{"kind":"message"}`))
	req.Header.Set("traceparent", "00-"+trace+"-00f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("manager stopped with an error: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("manager did not stop within 30s of its context ending")
	}
	id, _ := hex.DecodeString(trace)
	mu.Lock()
	defer mu.Unlock()
	all := bytes.Join(exports, nil)
	if !bytes.Contains(all, id) || !bytes.Contains(all, []byte("POST /v1/namespaces/{ns}/tenants/{tenant}/activities")) {
		t.Errorf("the collector got %d exports without the request's server span in the caller's trace", len(exports))
	}
}
