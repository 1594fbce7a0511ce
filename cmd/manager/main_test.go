package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	packhostv1alpha1 "github.com/packhost/packhost/api/v1alpha1"
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
// probes and metrics endpoint; it stops cleanly when its context ends. Metrics, the
// dispatcher's included, are served over HTTPS to authorized callers only, and not on
// the dispatcher's port.
func TestManagerStartsAndAnswersProbes(t *testing.T) {
	testenv.Require(t, env)
	ns := env.Namespace(t, "manager")
	reader, stranger := serviceAccountToken(t, ns, "scraper", true), serviceAccountToken(t, ns, "stranger", false)
	o := options{
		metricsAddr:             freeAddr(t),
		metricsSecure:           true,
		dispatcherAddr:          freeAddr(t),
		probeAddr:               freeAddr(t),
		leaderElect:             true,
		leaderElectionNamespace: ns,
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
	if err := waitOK(ctx, "http://"+o.dispatcherAddr+"/readyz", done); err != nil {
		t.Errorf("dispatcher /readyz: %v", err)
	}
	// The secure metrics server starts beside the probes, after making its certificate:
	// wait until it listens.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if c, err := net.Dial("tcp", o.metricsAddr); err == nil {
			c.Close()
			break
		}
	}
	if code, body := get(t, "http://"+o.dispatcherAddr+"/metrics", ""); code != http.StatusNotFound || strings.Contains(body, "packhost_") {
		t.Errorf("the dispatcher port answers /metrics: %d %.200s", code, body)
	}
	for _, tc := range []struct {
		name, token string
		status      []int
	}{
		{"no token", "", []int{http.StatusUnauthorized}},
		// controller-runtime's filter answers 500 when the TokenReview itself reports
		// an error, as it does for a token that is not a JWT.
		{"a token the API server does not know", "not-a-token", []int{http.StatusUnauthorized, http.StatusInternalServerError}},
		{"a service account without the metrics-reader role", stranger, []int{http.StatusForbidden}},
		{"a service account with it", reader, []int{http.StatusOK}},
	} {
		code, body := get(t, "https://"+o.metricsAddr+"/metrics", tc.token)
		if !slices.Contains(tc.status, code) || (code != http.StatusOK && strings.Contains(body, "packhost_")) {
			t.Errorf("/metrics with %s: %d %.200s, want %v", tc.name, code, body, tc.status)
		}
		if code == http.StatusOK && !strings.Contains(body, "packhost_dispatcher_unauthenticated_total") {
			t.Errorf("/metrics lacks the dispatcher's series")
		}
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

// serviceAccountToken creates a service account in ns, bound to the metrics-reader
// rules of config/rbac when reader is true, and returns a token for it.
func serviceAccountToken(t *testing.T, ns, name string, reader bool) string {
	t.Helper()
	ctx := context.Background()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := env.Client.Create(ctx, sa); err != nil {
		t.Fatal(err)
	}
	if reader {
		role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: ns + "-metrics-reader"},
			Rules: []rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}}}
		binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: ns + "-metrics-reader"},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: name}}}
		for _, o := range []client.Object{role, binding} {
			if err := env.Client.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = env.Client.Delete(context.Background(), o) })
		}
	}
	tr := &authenticationv1.TokenRequest{}
	if err := env.Client.SubResource("token").Create(ctx, sa, tr); err != nil {
		t.Fatalf("request a token for %s: %v", name, err)
	}
	return tr.Status.Token
}

// get fetches url with token as bearer, trusting any certificate (the metrics server's
// is self-signed).
func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := c.Do(req)
	if err != nil {
		t.Errorf("GET %s: %v", url, err)
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
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

// With --watch-namespaces the manager reconciles only the objects of those namespaces.
func TestWatchNamespaces(t *testing.T) {
	var o options
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.bind(fs)
	if err := fs.Parse([]string{"--watch-namespaces=team-a, team-b", "--watch-namespaces=team-c"}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for ns := range cacheOptions(o).DefaultNamespaces {
		got = append(got, ns)
	}
	slices.Sort(got)
	if strings.Join(got, ",") != "team-a,team-b,team-c" {
		t.Fatalf("watched namespaces %v, want team-a,team-b,team-c", got)
	}

	testenv.Require(t, env)
	watched, other := env.Namespace(t, "watched"), env.Namespace(t, "unwatched")
	o = options{metricsAddr: "0", dispatcherAddr: "0", probeAddr: "0", cacheDir: t.TempDir(),
		gracefulShutdown: 5 * time.Second, watchNamespaces: []string{watched},
		// Another test of this process ran a manager with the same controllers.
		skipNameValidation: true}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, env.Config, o, zap.New(zap.UseDevMode(true))) }()
	defer func() { cancel(); <-done }()
	for _, ns := range []string{watched, other} {
		if err := env.Client.Create(ctx, &packhostv1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "acme", Namespace: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	// Generous: under a full test run on two shared cores the manager's caches take a
	// while to sync (the test takes 3 s alone).
	deadline := time.Now().Add(90 * time.Second)
	finalized := func(ns string) bool {
		tn := &packhostv1alpha1.Tenant{}
		return env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "acme"}, tn) == nil && len(tn.Finalizers) > 0
	}
	for !finalized(watched) && time.Now().Before(deadline) {
		select {
		case err := <-done:
			done <- err // for the deferred wait
			t.Fatalf("the manager stopped: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if !finalized(watched) {
		t.Fatal("the tenant of the watched namespace was not reconciled")
	}
	time.Sleep(time.Second)
	if finalized(other) {
		t.Fatal("the tenant of an unwatched namespace was reconciled")
	}
	for _, ns := range []string{watched, other} {
		tn := &packhostv1alpha1.Tenant{}
		if env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "acme"}, tn) == nil {
			tn.Finalizers = nil
			_ = env.Client.Update(ctx, tn)
		}
	}
}
