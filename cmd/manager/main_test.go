package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/packhost/packhost/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Run(m, &env)) }

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// The manager starts against a real API server, with leader election on, and answers its
// probes and metrics endpoint; it stops cleanly when its context ends.
func TestManagerStartsAndAnswersProbes(t *testing.T) {
	testenv.Require(t, env)
	o := options{
		metricsAddr:             freeAddr(t),
		probeAddr:               freeAddr(t),
		leaderElect:             true,
		leaderElectionNamespace: env.Namespace(t, "manager"),
		cacheDir:                t.TempDir(),
		gracefulShutdown:        5 * time.Second,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, env.Config, o, zap.New(zap.UseDevMode(true))) }()

	for _, path := range []string{"/healthz", "/readyz"} {
		if err := waitOK(ctx, "http://"+o.probeAddr+path, done); err != nil {
			cancel()
			t.Fatalf("%s: %v", path, err)
		}
	}
	if err := waitOK(ctx, "http://"+o.metricsAddr+"/metrics", done); err != nil {
		t.Errorf("/metrics: %v", err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("manager stopped with an error: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("manager did not stop within 30s of its context ending")
	}
}

func TestRunRefusesUnwritableCacheDir(t *testing.T) {
	testenv.Require(t, env)
	file := t.TempDir() + "/file"
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(context.Background(), env.Config, options{cacheDir: file + "/sub", metricsAddr: "0", probeAddr: "0"}, zap.New())
	if err == nil {
		t.Fatal("run accepted a cache directory it cannot create")
	}
}

// waitOK polls url until it answers 200, the manager exits, or 60s pass.
func waitOK(ctx context.Context, url string, done <-chan error) error {
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			return fmt.Errorf("manager exited: %v", err)
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("status %d: %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("no 200 within 60s; last: %s", last)
}

// The egress flags take comma-separated, repeatable lists and refuse a bad entry at
// start-up, naming it, rather than fetching under a policy the operator did not mean.
func TestSourceEgressFlags(t *testing.T) {
	for _, tc := range []struct {
		args             []string
		allow, deny, err string
	}{
		{args: nil, allow: "[]", deny: "[]"},
		{args: []string{"--source-allow=127.0.0.1/32, registry.internal", "--source-allow=::1"}, allow: "[127.0.0.1/32 registry.internal ::1]", deny: "[]"},
		{args: []string{"--source-deny=10.96.0.0/12,10.244.0.0/16"}, allow: "[]", deny: "[10.96.0.0/12 10.244.0.0/16]"},
		{args: []string{"--source-allow=http://registry.internal"}, err: `egress allow entry "http://registry.internal"`},
		{args: []string{"--source-deny=registry.internal"}, err: `egress deny entry "registry.internal"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var o options
			fs := flag.NewFlagSet("manager", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			o.bind(fs)
			err := fs.Parse(tc.args)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Parse(%q) = %v, want an error naming %s", tc.args, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprint(o.sourceAllow); got != tc.allow {
				t.Errorf("sourceAllow = %s, want %s", got, tc.allow)
			}
			if got := fmt.Sprint(o.sourceDeny); got != tc.deny {
				t.Errorf("sourceDeny = %s, want %s", got, tc.deny)
			}
		})
	}
}
