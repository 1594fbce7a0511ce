package dispatcher

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/packhost/packhost/runtime"
)

// twoTenants serves tenants default/acme (token "tok") and default/beta (token
// "beta-tok"), each with one route to its own revision v1, all of pack.
func twoTenants(t *testing.T, pack string, limits runtime.Limits) *Server {
	t.Helper()
	e := newEngine(t)
	revs := revisions{"v1": loadRevision(t, e, "v1", pack, runtime.NewMemStore(), limits),
		"other/v1": loadRevision(t, e, "v1", "echo", runtime.NewMemStore(), runtime.Limits{})}
	router := NewRouter()
	for _, tn := range []struct{ name, token string }{{"acme", "tok"}, {"other", "beta-tok"}} {
		router.PublishTenant("default", tn.name, &TenantConfig{Namespace: "default", Name: tn.name, Env: "prod",
			Tokens: map[string]string{tn.token: "app"}, MaxBodyBytes: 4096})
		router.PublishTable("default", tn.name, NewTable("s", []Route{{Revision: "v1", Percent: 100}}, true))
	}
	reg := prometheus.NewRegistry()
	return &Server{Router: router, Revisions: revs, Metrics: NewMetrics(reg), Log: logr.Discard()}
}

// post sends one activity to tenant over a fresh connection and returns the status.
func post(t *testing.T, addr net.Addr, tenant, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr.String()+"/v1/namespaces/default/tenants/"+tenant+"/activities",
		strings.NewReader(`{"kind":"message","user_id":"ann","payload":1}`))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		t.Errorf("tenant %s: %v", tenant, err)
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// slowBody opens a connection that sends an activity's headers and the first bytes of
// its body, then stalls; the returned function reads the answer.
func slowBody(t *testing.T, addr net.Addr, tenant, token string) (answer func() int) {
	t.Helper()
	conn, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	body := `{"kind":"message","payload":1}`
	if _, err := fmt.Fprintf(conn, "POST /v1/namespaces/default/tenants/%s/activities HTTP/1.1\r\nHost: x\r\n"+
		"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s", tenant, token, len(body), body[:5]); err != nil {
		t.Fatal(err)
	}
	return func() int {
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
}

// Tenant acme's slow bodies hold acme's own slots, not the replica's: with
// --max-in-flight=8, eight of them leave tenant beta served, and acme's requests past
// its share are refused at once with 429.
func TestSlowBodiesUseTheTenantsShareOnly(t *testing.T) {
	s := twoTenants(t, "echo", runtime.Limits{})
	s.MaxInFlight, s.ReadTimeout = 8, 3*time.Second
	addr, stop := serveLoopback(t, s)
	t.Cleanup(func() { _ = stop() })

	var answers []func() int
	for range 8 {
		answers = append(answers, slowBody(t, addr, "acme", "tok"))
	}
	time.Sleep(300 * time.Millisecond) // the eight are read up to their stalled bodies
	// beta sends 16 requests, four at a time: its own share of the 8-slot replica.
	var wg sync.WaitGroup
	share := make(chan struct{}, 4)
	for i := range 16 {
		wg.Add(1)
		share <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-share }()
			if code, body := post(t, addr, "other", "beta-tok"); code != http.StatusOK {
				t.Errorf("beta's request %d while acme's bodies stall: %d %s", i, code, body)
			}
		}()
	}
	wg.Wait()
	refused := 0
	for _, answer := range answers {
		if answer() == http.StatusTooManyRequests {
			refused++
		}
	}
	// acme's share of an 8-slot replica is 4: the other four were refused, not queued.
	if refused != 4 {
		t.Errorf("%d of acme's 8 stalled requests were refused with 429, want 4", refused)
	}
}

// Tenant acme's stuck guests hold at most its share of the replica's slots: while acme
// runs looping activities up to their deadline, beta is served.
func TestStuckGuestsUseTheTenantsShareOnly(t *testing.T) {
	s := twoTenants(t, "hostile/loop", runtime.Limits{Timeout: 1500 * time.Millisecond, MaxConcurrency: 8})
	s.MaxInFlight = 8
	addr, stop := serveLoopback(t, s)
	t.Cleanup(func() { _ = stop() })

	var wg sync.WaitGroup
	codes := make(chan int, 8)
	for range 8 {
		wg.Add(1)
		go func() { defer wg.Done(); c, _ := post(t, addr, "acme", "tok"); codes <- c }()
	}
	time.Sleep(300 * time.Millisecond) // acme's guests are looping
	for i := range 4 {
		if code, body := post(t, addr, "other", "beta-tok"); code != http.StatusOK {
			t.Errorf("beta's request %d while acme's guests loop: %d %s", i, code, body)
		}
	}
	wg.Wait()
	close(codes)
	got := map[int]int{}
	for c := range codes {
		got[c]++
	}
	if got[http.StatusGatewayTimeout] != 4 || got[http.StatusTooManyRequests] != 4 {
		t.Errorf("acme's 8 looping activities answered %v, want 4 timeouts and 4 refusals", got)
	}
}

func TestTenantShare(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		maxConcurrent, replica int
		want                   int
	}{
		{"CRD default, default replica limit", 16, 1024, 64},
		{"no limit published: the CRD default", 0, 1024, 64},
		{"capped at half the replica", 1024, 1024, 512},
		{"small replica", 16, 8, 4},
		{"one-slot replica", 16, 1, 1},
		{"no replica limit", 300, 0, 1200},
		{"one activity at a time", 1, 1024, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tenantShare(&TenantConfig{MaxConcurrentActivities: tc.maxConcurrent}, tc.replica); got != tc.want {
				t.Fatalf("tenantShare(%d, %d) = %d, want %d", tc.maxConcurrent, tc.replica, got, tc.want)
			}
		})
	}
}

// A tenant's own limit holds however large the replica is: with maxConcurrentActivities
// 1, its fifth stalled body is refused.
func TestTenantLimitFromItsConfig(t *testing.T) {
	s := twoTenants(t, "echo", runtime.Limits{})
	cfg, _ := s.Router.Tenant("default", "acme")
	one := *cfg
	one.MaxConcurrentActivities = 1
	s.Router.PublishTenant("default", "acme", &one)
	s.MaxInFlight, s.ReadTimeout = 1024, 3*time.Second
	addr, stop := serveLoopback(t, s)
	t.Cleanup(func() { _ = stop() })
	for range 4 {
		slowBody(t, addr, "acme", "tok")
	}
	time.Sleep(200 * time.Millisecond)
	if code, body := post(t, addr, "acme", "tok"); code != http.StatusTooManyRequests || !strings.Contains(body, CodeOverloaded) {
		t.Fatalf("acme's fifth request: %d %s, want 429 %s", code, body, CodeOverloaded)
	}
	if code, _ := post(t, addr, "other", "beta-tok"); code != http.StatusOK {
		t.Fatalf("beta: %d", code)
	}
}
