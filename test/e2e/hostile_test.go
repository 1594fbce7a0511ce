package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/packhost/packhost/internal/testenv"
)

// hostilePacks are served by the test registry for TestHostileTenant.
var hostilePacks = []string{"hostile/recursion", "hostile/deep-recursion", "hostile/table-bomb", "hostile/sleep", "hostile/flood", "hostile/grow"}

// hostileManifests: a victim tenant with the echo pack, and an attacker whose routing
// caller may address each of its hostile revisions by the Packhost-Revision header.
func hostileManifests() string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: v1
kind: Namespace
metadata: {name: hostile}
---
apiVersion: v1
kind: Secret
metadata: {name: victim-tokens, namespace: hostile, annotations: {packhost.io/tenants: victim}}
stringData: {app: victim-token}
---
apiVersion: v1
kind: Secret
metadata: {name: attacker-tokens, namespace: hostile, annotations: {packhost.io/tenants: attacker}}
stringData: {atk: attacker-token}
---
apiVersion: packhost.io/v1alpha1
kind: Tenant
metadata: {name: victim, namespace: hostile}
spec:
  auth: {secretRef: {name: victim-tokens}}
  limits: {activityTimeout: 5s}
---
apiVersion: packhost.io/v1alpha1
kind: Tenant
metadata: {name: attacker, namespace: hostile}
spec:
  auth: {secretRef: {name: attacker-tokens}, routingCallers: [atk]}
  policy: {state: {read: true, write: true}, wasi: {clocks: true}}
  limits: {activityTimeout: 300ms, maxConcurrentActivities: 4, memoryPages: 16384}
---
apiVersion: packhost.io/v1alpha1
kind: Revision
metadata: {name: victim-echo, namespace: hostile}
spec:
  tenantRef: {name: victim}
  packs: [{name: echo, image: %s/packs/echo:v1}]
---
apiVersion: packhost.io/v1alpha1
kind: TrafficSplit
metadata: {name: victim, namespace: hostile}
spec:
  tenantRef: {name: victim}
  routes: [{revisionName: victim-echo, percent: 100}]
---
apiVersion: packhost.io/v1alpha1
kind: TrafficSplit
metadata: {name: attacker, namespace: hostile}
spec:
  tenantRef: {name: attacker}
  routes: [{revisionName: att-recursion, percent: 100}]
`, registryAddr)
	for _, p := range hostilePacks {
		name := strings.TrimPrefix(p, "hostile/")
		fmt.Fprintf(&b, `---
apiVersion: packhost.io/v1alpha1
kind: Revision
metadata: {name: att-%s, namespace: hostile}
spec:
  tenantRef: {name: attacker}
  packs: [{name: %s, image: %s/packs/%s:v1}]
`, name, name, registryAddr, p)
	}
	return b.String()
}

// hostileCall sends one activity to a tenant of the hostile namespace, optionally to a
// chosen revision, and returns the status and error code.
func hostileCall(m *manager, tenant, token, revision, body string) (int, string) {
	req, _ := http.NewRequest(http.MethodPost, "http://"+m.dispatcher+"/v1/namespaces/hostile/tenants/"+tenant+"/activities", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	if revision != "" {
		req.Header.Set("Packhost-Revision", revision)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return -1, err.Error()
	}
	defer resp.Body.Close()
	var r reply
	_ = json.NewDecoder(resp.Body).Decode(&r)
	return resp.StatusCode, r.Error.Code
}

// TestHostileTenant: a manager serves a victim tenant while an attacker tenant tries
// every attack of the trust model. Every victim activity succeeds, the manager stays up,
// ready and within its memory budget, and each attack gets its typed answer.
func TestHostileTenant(t *testing.T) {
	testenv.Require(t, env)
	metrics := freePort(t)
	m := startManager(t, filepath.Join(workDir, "cache-hostile"), "--memory-budget=768Mi", "--max-in-flight=64",
		"--metrics-bind-address", metrics, "--metrics-secure=false")
	t.Cleanup(func() { _, _ = kubectl(t, "", "delete", "namespace", "hostile", "--wait=false") })
	mustKubectl(t, hostileManifests(), "apply", "--server-side", "-f", "-")
	mustKubectl(t, "", "wait", "-n", "hostile", "--for=condition=Ready", "--timeout=180s", "phrev", "--all")
	waitFor(t, 60*time.Second, func() bool {
		s, _ := hostileCall(m, "victim", "victim-token", "", msg("v"))
		a, _ := hostileCall(m, "attacker", "attacker-token", "att-table-bomb", msg("a"))
		return s == 200 && a == 200
	}, "both tenants are served")

	// The victim's traffic runs through every attack.
	var mu sync.Mutex
	victim := map[string]int{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				status, code := hostileCall(m, "victim", "victim-token", "", msg(fmt.Sprintf("user-%d-%d", w, i%50)))
				mu.Lock()
				victim[strconv.Itoa(status)+" "+code]++
				mu.Unlock()
			}
		}()
	}

	attack := func(name, revision string, n int, want int, wantCode string) {
		t.Run(name, func(t *testing.T) {
			for range n {
				if status, code := hostileCall(m, "attacker", "attacker-token", revision, msg("a")); status != want || code != wantCode {
					t.Errorf("attacker got %d %q, want %d %q", status, code, want, wantCode)
				}
			}
		})
	}
	attack("table bomb", "att-table-bomb", 5, 200, "")
	attack("loop-free recursion", "att-recursion", 3, 504, "timeout")
	attack("deep recursion", "att-deep-recursion", 3, 502, "resource_limit")
	attack("WASI sleep", "att-sleep", 3, 504, "timeout")
	attack("state flood", "att-flood", 2, 502, "resource_limit")
	t.Run("memory pressure across many instances", func(t *testing.T) {
		var g sync.WaitGroup
		for range 4 {
			g.Add(1)
			go func() {
				defer g.Done()
				if status, code := hostileCall(m, "attacker", "attacker-token", "att-grow", msg("a")); status != 502 && status != 504 && status != 429 {
					t.Errorf("a growing instance got %d %q, want a trap, a timeout or overload", status, code)
				}
			}()
		}
		g.Wait()
	})
	t.Run("slow bodies", func(t *testing.T) {
		// Twenty requests whose bodies trickle in take the attacker's whole share and
		// no more: the rest of them are refused at once.
		var g sync.WaitGroup
		refused := 0
		var rmu sync.Mutex
		for range 20 {
			g.Add(1)
			go func() {
				defer g.Done()
				pr, pw := io.Pipe()
				go func() {
					_, _ = pw.Write([]byte(`{"kind":"message",`))
					time.Sleep(2 * time.Second)
					_, _ = pw.Write([]byte(`"user_id":"slow"}`))
					_ = pw.Close()
				}()
				req, _ := http.NewRequest(http.MethodPost, "http://"+m.dispatcher+"/v1/namespaces/hostile/tenants/attacker/activities", pr)
				req.Header.Set("Authorization", "Bearer attacker-token")
				resp, err := httpClient.Do(req)
				if err == nil {
					if resp.StatusCode == http.StatusTooManyRequests {
						rmu.Lock()
						refused++
						rmu.Unlock()
					}
					resp.Body.Close()
				}
			}()
		}
		g.Wait()
		if refused == 0 {
			t.Errorf("20 slow bodies from a tenant with a share of 16: none refused")
		}
	})
	t.Run("unauthenticated label flood", func(t *testing.T) {
		// Thirty at a time: each refusal is answered after the dispatcher's delay.
		var g sync.WaitGroup
		sem := make(chan struct{}, 30)
		for i := range 300 {
			g.Add(1)
			sem <- struct{}{}
			go func() {
				defer g.Done()
				defer func() { <-sem }()
				req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("http://%s/v1/namespaces/ns-%d/tenants/made-up-%d/activities", m.dispatcher, i, i), strings.NewReader(msg("x")))
				req.Header.Set("Authorization", "Bearer guess")
				resp, err := httpClient.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized {
					t.Errorf("made-up tenant %d: %d, want 401", i, resp.StatusCode)
				}
			}()
		}
		g.Wait()
		if series := metricLines(t, metrics, "made-up-"); series != 0 {
			t.Fatalf("%d metric lines name made-up tenants", series)
		}
	})
	t.Run("deleting a routed revision", func(t *testing.T) {
		mustKubectl(t, "", "delete", "-n", "hostile", "phrev", "att-recursion", "--wait=false")
		time.Sleep(2 * time.Second)
		resp, err := http.Get("http://" + m.probes + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("the replica is not ready after an attacker deleted its routed revision: %d", resp.StatusCode)
		}
	})

	close(stop)
	wg.Wait()
	total := 0
	for k, n := range victim {
		total += n
		if k != "200 " {
			t.Errorf("the victim got %d answers %q during the attacks", n, k)
		}
	}
	t.Logf("victim answers during the attacks: %v", victim)
	if total < 20 {
		t.Errorf("the victim sent only %d activities during the attacks", total)
	}
	if m.cmd.ProcessState != nil {
		t.Fatalf("the manager exited: %v", m.cmd.ProcessState)
	}
	used, budget := metricSum(t, metrics, "packhost_runtime_memory_used_bytes"), metricSum(t, metrics, "packhost_runtime_memory_budget_bytes")
	if budget == 0 || used > budget {
		t.Fatalf("guest memory accounted %.0f MiB against a budget of %.0f MiB", used/(1<<20), budget/(1<<20))
	}
}

// metricLines counts the lines of the manager's metrics that contain s.
func metricLines(t *testing.T, addr, s string) int {
	t.Helper()
	n := 0
	for _, line := range metricsText(t, addr) {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// metricSum adds up the samples of a metric.
func metricSum(t *testing.T, addr, name string) float64 {
	t.Helper()
	sum := 0.0
	for _, line := range metricsText(t, addr) {
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err == nil {
				sum += v
			}
		}
	}
	return sum
}

func metricsText(t *testing.T, addr string) []string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var lines []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}
