// Package e2e drives packhost as a user does: the real manager binary against a real
// kube-apiserver, configured with the real kubectl, serving activities over HTTP.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/internal/testenv"
)

// The samples pull their packs from this registry address.
const registryAddr = "127.0.0.1:5001"

const token = "demo-token-change-me"

var (
	env        *testenv.Env
	kubeconfig string
	managerBin string
	workDir    string
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Run(m, &env, setup))
}

func setup(e *testenv.Env) error {
	var err error
	if workDir, err = os.MkdirTemp("", "packhost-e2e-"); err != nil {
		return err
	}
	managerBin = filepath.Join(workDir, "manager")
	build := exec.Command("go", "build", "-o", managerBin, "./cmd/manager")
	build.Dir = testenv.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build manager: %v\n%s", err, out)
	}
	if kubeconfig, err = e.KubeconfigFile(workDir); err != nil {
		return err
	}
	return serveRegistry()
}

// serveRegistry runs an OCI registry at the samples' address holding the built packs.
func serveRegistry() error {
	all := map[string][]byte{}
	for _, p := range append([]string{"counter", "survey", "echo", "flaky"}, hostilePacks...) {
		b, err := packs.Build(p)
		if err != nil {
			return err
		}
		all[p] = b
	}
	if err := packs.ServeRegistry(registryAddr, all); err != nil {
		return fmt.Errorf("the samples pull from %s (is make run-local running?): %w", registryAddr, err)
	}
	return nil
}

func kubectl(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testenv.Kubectl(), append([]string{"--kubeconfig", kubeconfig}, args...)...)
	cmd.Dir = testenv.RepoRoot()
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustKubectl(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := kubectl(t, stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// manager is one running manager process.
type manager struct {
	cmd        *exec.Cmd
	dispatcher string
	probes     string
	log        *bytes.Buffer
}

func freePort(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type syncBuffer struct {
	mu sync.Mutex
	bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Buffer.Write(p)
}

// startManager runs the manager binary with leader election and waits until it is ready.
// extra flags come after the defaults, so they win.
func startManager(t testing.TB, cacheDir string, extra ...string) *manager {
	t.Helper()
	m := &manager{dispatcher: freePort(t), probes: freePort(t)}
	logs := &syncBuffer{}
	m.cmd = exec.Command(managerBin, append([]string{
		"--kubeconfig", kubeconfig, "--leader-elect", "--leader-election-namespace", "default",
		"--metrics-bind-address", "0", "--health-probe-bind-address", m.probes,
		"--dispatcher-bind-address", m.dispatcher, "--cache-dir", cacheDir,
		// The registry and the test's url servers are on 127.0.0.1, which the egress
		// policy of pack sources refuses unless allowed.
		"--source-allow=127.0.0.1/32"}, extra...)...)
	m.cmd.Stdout, m.cmd.Stderr = logs, logs
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if m.cmd.ProcessState == nil {
			_ = m.cmd.Process.Signal(syscall.SIGTERM)
			_ = m.cmd.Wait()
		}
		if t.Failed() {
			logs.mu.Lock()
			t.Logf("manager log (last 4 KiB):\n%s", tail(logs.String(), 4096))
			logs.mu.Unlock()
		}
	})
	m.waitReady(t)
	return m
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (m *manager) waitReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + m.probes + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("manager not ready within 90s")
}

// reply is one activity's answer.
type reply struct {
	Status     int
	Revision   string
	Activities []struct {
		Action  string          `json:"action"`
		Payload json.RawMessage `json:"payload"`
	}
	Error struct {
		Code string `json:"code"`
	}
}

var httpClient = &http.Client{Timeout: 30 * time.Second}

// send posts an activity of the samples' tenant, default/acme.
func send(t testing.TB, m *manager, activity string) reply {
	t.Helper()
	return m.post(t, "default", "acme", activity)
}

// post sends an activity to the dispatcher of m for tenant namespace/name, with the
// samples' token.
func (m *manager) post(t testing.TB, namespace, tenant, activity string) reply {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+m.dispatcher+"/v1/namespaces/"+namespace+"/tenants/"+tenant+"/activities", strings.NewReader(activity))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := httpClient.Do(req)
	if err != nil {
		return reply{Status: -1}
	}
	defer resp.Body.Close()
	var r reply
	_ = json.NewDecoder(resp.Body).Decode(&r)
	r.Status = resp.StatusCode
	return r
}

func msg(user string, extra ...string) string {
	fields := append([]string{`"kind":"message"`, `"user_id":"` + user + `"`}, extra...)
	return "{" + strings.Join(fields, ",") + "}"
}

func setSplit(t *testing.T, v1, v2 int) {
	t.Helper()
	patch := fmt.Sprintf(`{"spec":{"routes":[{"revisionName":"acme-bot-v1","percent":%d,"tag":"stable"},{"revisionName":"acme-bot-v2","percent":%d,"tag":"canary"}]}}`, v1, v2)
	mustKubectl(t, "", "patch", "phsplit", "acme", "--type=merge", "-p", patch)
	want := fmt.Sprintf("acme-bot-v1=%d,acme-bot-v2=%d", v1, v2)
	waitFor(t, 60*time.Second, func() bool {
		out, _ := kubectl(t, "", "get", "phsplit", "acme", "-o", "jsonpath={.status.summary}")
		return out == want
	}, "split status shows "+want)
	time.Sleep(500 * time.Millisecond) // let every replica's split controller publish
}

func waitFor(t testing.TB, d time.Duration, ok func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if ok() {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting until %s", d, what)
}

// TestEndToEnd runs the user's story in order; each step depends on the state the
// previous one left.
func TestEndToEnd(t *testing.T) {
	testenv.Require(t, env)
	cache := filepath.Join(workDir, "cache-a")
	outer := t // managers live until the whole story ends, not the step that starts them
	m1 := startManager(t, cache)

	mustKubectl(t, "", "apply", "--server-side", "-f", "config/samples/")
	mustKubectl(t, "", "wait", "--for=condition=Ready", "--timeout=120s", "phrev", "--all")
	mustKubectl(t, "", "wait", "--for=condition=Ready", "--timeout=60s", "phtenant/acme", "phsplit/acme")
	waitFor(t, 30*time.Second, func() bool { return send(t, m1, msg("probe")).Status == 200 }, "the dispatcher serves acme")

	var assignment map[string]string
	t.Run("90/10 split lands within 3 points and users stick", func(t *testing.T) {
		assignment = spread(t, m1, 400, 5)
		share := float64(count(assignment, "acme-bot-v2")) / 400 * 100
		t.Logf("canary share over 400 users: %.1f%%", share)
		// 400 sticky users carry the 2,000 activities; the share of users is what the
		// buckets place, and each user's 5 activities follow it.
		if math.Abs(share-10) > 3 {
			t.Fatalf("canary got %.1f%% of users, want 10±3", share)
		}
	})

	t.Run("moving to 50/50 moves no user off the canary", func(t *testing.T) {
		setSplit(t, 50, 50)
		after := spread(t, m1, 400, 1)
		moved := 0
		for u, rev := range assignment {
			if rev == "acme-bot-v2" && after[u] != "acme-bot-v2" {
				t.Errorf("user %s moved off the canary", u)
			}
			if rev != after[u] {
				moved++
			}
		}
		share := float64(count(after, "acme-bot-v2")) / 400 * 100
		if math.Abs(share-50) > 6 {
			t.Errorf("canary got %.1f%% of users at 50/50", share)
		}
		t.Logf("50/50: %d users moved onto the canary, share now %.1f%%", moved, share)
	})

	t.Run("a parked wait resumes on its revision after the split moves away", func(t *testing.T) {
		setSplit(t, 100, 0)
		first := send(t, m1, msg("surveyor", `"flow_id":"survey"`, `"payload":"start"`))
		if first.Status != 200 || first.Revision != "acme-bot-v1" {
			t.Fatalf("survey start: %+v", first)
		}
		setSplit(t, 0, 100)
		next := send(t, m1, msg("surveyor", `"payload":"\"Sam\""`))
		if next.Revision != "acme-bot-v1" || !strings.Contains(string(next.Activities[0].Payload), `"step":2`) {
			t.Fatalf("the parked wait did not resume on acme-bot-v1: %+v %s", next, next.Activities)
		}
		// Pins are per flow: the same user's counter follows the split, answered by the
		// counter, and the survey stays parked on acme-bot-v1.
		if r := send(t, m1, msg("surveyor", `"flow_id":"count"`)); r.Status != 200 || r.Revision != "acme-bot-v2" || !strings.Contains(string(r.Activities[0].Payload), `"count"`) {
			t.Fatalf("the counter of a user with a parked survey: %+v %s", r, r.Activities)
		}
		if r := send(t, m1, msg("surveyor", `"payload":"\"ops\""`)); r.Revision != "acme-bot-v1" || !strings.Contains(string(r.Activities[0].Payload), `"step":3`) {
			t.Fatalf("the survey after the counter: %+v %s", r, r.Activities)
		}
		// A user without a wait follows the split.
		if r := send(t, m1, msg("newcomer")); r.Revision != "acme-bot-v2" {
			t.Fatalf("a new user went to %s at 0/100", r.Revision)
		}
		setSplit(t, 90, 10)
	})

	t.Run("SIGKILL mid-traffic loses nothing answered", func(t *testing.T) {
		answered := map[string]int{}
		var mu sync.Mutex
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				user := fmt.Sprintf("killer-%d", w)
				for {
					select {
					case <-stop:
						return
					default:
					}
					r := send(t, m1, `{"kind":"custom","action":"count-user","user_id":"`+user+`"}`)
					if r.Status == 200 {
						var c struct{ Count int }
						_ = json.Unmarshal(r.Activities[0].Payload, &c)
						mu.Lock()
						answered[user] = max(answered[user], c.Count)
						mu.Unlock()
					}
					if r.Status == -1 {
						return
					}
				}
			}()
		}
		time.Sleep(2 * time.Second)
		_ = m1.cmd.Process.Signal(syscall.SIGKILL)
		_ = m1.cmd.Wait()
		close(stop)
		wg.Wait()
		if len(answered) == 0 {
			t.Fatal("no activity was answered before the kill")
		}
		m1 = startManager(outer, cache)
		waitFor(t, 60*time.Second, func() bool { return send(t, m1, msg("probe")).Status == 200 }, "the restarted manager serves")
		for user, last := range answered {
			r := send(t, m1, `{"kind":"custom","action":"count-user","user_id":"`+user+`"}`)
			var c struct{ Count int }
			_ = json.Unmarshal(r.Activities[0].Payload, &c)
			if c.Count <= last {
				t.Errorf("%s: answered count %d before the kill, next count %d: an answered write was lost", user, last, c.Count)
			}
		}
	})

	t.Run("bad manifests are refused and a wrong digest keeps the last good table", func(t *testing.T) {
		out, err := kubectl(t, `apiVersion: packhost.io/v1alpha1
kind: TrafficSplit
metadata: {name: bad}
spec:
  tenantRef: {name: acme}
  routes:
  - {revisionName: acme-bot-v1, percent: 80}
`, "apply", "-f", "-")
		if err == nil || !strings.Contains(out, "route percents must add up to exactly 100") {
			t.Fatalf("kubectl apply of a bad split: %v\n%s", err, out)
		}
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("not the pinned pack")) }))
		defer srv.Close()
		mustKubectl(t, `apiVersion: packhost.io/v1alpha1
kind: Revision
metadata: {name: acme-bot-v3}
spec:
  tenantRef: {name: acme}
  packs:
  - name: counter
    url: `+srv.URL+`/counter.wasm
    sha256: `+strings.Repeat("ab", 32)+`
`, "apply", "-f", "-")
		var last string
		defer func() {
			if t.Failed() {
				t.Logf("acme-bot-v3 was last %q", last)
			}
		}()
		waitFor(t, 60*time.Second, func() bool {
			last, _ = kubectl(t, "", "get", "phrev", "acme-bot-v3", "-o", "jsonpath={.status.phase}/{.status.conditions[?(@.type==\"Ready\")].reason}: {.status.conditions[?(@.type==\"Ready\")].message}")
			return strings.HasPrefix(last, "Failed/DigestMismatch:")
		}, "acme-bot-v3 is Failed with DigestMismatch")
		mustKubectl(t, "", "patch", "phsplit", "acme", "--type=merge", "-p",
			`{"spec":{"routes":[{"revisionName":"acme-bot-v1","percent":50},{"revisionName":"acme-bot-v3","percent":50}]}}`)
		// A route to a Failed revision cannot take effect without a change of spec: the
		// split says RevisionFailed and is Stalled (kstatus Failed), serving its last
		// good table meanwhile.
		waitFor(t, 30*time.Second, func() bool {
			out, _ := kubectl(t, "", "get", "phsplit", "acme", "-o", "jsonpath={.status.conditions[?(@.type==\"RoutesReady\")].reason}/{.status.conditions[?(@.type==\"Stalled\")].status}")
			return out == "RevisionFailed/True"
		}, "the split reports RevisionFailed and Stalled")
		if out := mustKubectl(t, "", "get", "phsplit", "acme", "-o", "jsonpath={.status.summary}"); out != "acme-bot-v1=90,acme-bot-v2=10" {
			t.Fatalf("the split's table in use changed to %q", out)
		}
		for i := range 50 {
			if r := send(t, m1, msg(fmt.Sprintf("during-%d", i))); r.Status != 200 || r.Revision == "acme-bot-v3" {
				t.Fatalf("traffic during the bad rollout: %+v", r)
			}
		}
		setSplit(t, 90, 10)
	})

	t.Run("two managers both serve and one counter ends exact", func(t *testing.T) {
		m2 := startManager(outer, filepath.Join(workDir, "cache-b"))
		waitFor(t, 60*time.Second, func() bool { return send(t, m2, msg("probe")).Status == 200 }, "the second manager serves")
		const per = 100
		var wg sync.WaitGroup
		failures := make(chan string, 2*per)
		for _, m := range []*manager{m1, m2} {
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range per / 4 {
						if r := send(t, m, `{"kind":"custom","action":"count-user","user_id":"shared"}`); r.Status != 200 {
							failures <- fmt.Sprintf("%d %s", r.Status, r.Error.Code)
						}
					}
				}()
			}
		}
		wg.Wait()
		close(failures)
		for f := range failures {
			t.Errorf("increment failed: %s", f)
		}
		r := send(t, m2, `{"kind":"custom","action":"count-user","user_id":"shared"}`)
		var c struct{ Count int }
		_ = json.Unmarshal(r.Activities[0].Payload, &c)
		if c.Count != 2*per+1 {
			t.Fatalf("after %d increments through two managers the counter reads %d, want %d", 2*per, c.Count-1, 2*per)
		}
	})
}

// spread sends n activities for each of users users and returns each user's revision,
// failing when a user is served by two revisions.
func spread(t *testing.T, m *manager, users, n int) map[string]string {
	t.Helper()
	out := map[string]string{}
	for u := range users {
		user := fmt.Sprintf("user-%d", u)
		for range n {
			r := send(t, m, msg(user))
			if r.Status != 200 {
				t.Fatalf("activity for %s: %d %s", user, r.Status, r.Error.Code)
			}
			if prev, ok := out[user]; ok && prev != r.Revision {
				t.Fatalf("user %s moved from %s to %s under an unchanged split", user, prev, r.Revision)
			}
			out[user] = r.Revision
		}
	}
	return out
}

func count(m map[string]string, rev string) int {
	n := 0
	for _, v := range m {
		if v == rev {
			n++
		}
	}
	return n
}

// config/default is what users deploy: it renders with kubectl kustomize and the API
// server accepts every object of it (dry run: no image can be pulled here).
func TestDeployManifestsDryRun(t *testing.T) {
	testenv.Require(t, env)
	rendered := mustKubectl(t, "", "kustomize", "config/default")
	for _, want := range []string{"kind: Deployment", "replicas: 2", "--leader-elect", "kind: PodDisruptionBudget",
		"name: packhost-dispatcher", "readOnlyRootFilesystem: true", "runAsNonRoot: true", "readinessProbe", "kind: CustomResourceDefinition"} {
		if !strings.Contains(rendered, want) {
			t.Errorf("config/default does not render %q", want)
		}
	}
	mustKubectl(t, "", "create", "namespace", "packhost-system")
	if out, err := kubectl(t, rendered, "apply", "--server-side", "--dry-run=server", "--force-conflicts", "-f", "-"); err != nil {
		t.Fatalf("dry run of config/default: %v\n%s", err, out)
	}
}
