package controllers_test

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/internal/testenv"
	"github.com/packhost/packhost/source"
)

// blackHole is a TCP listener that accepts connections and never answers; it returns
// its address.
func blackHole(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return l.Addr().String()
}

// Fetching and compiling run off the reconcile path: Revisions whose source never
// answers show Loading (phase and Reconciling=True) while healthy Revisions created
// after them become Ready promptly. (Reconcile used to fetch inline with 4 workers:
// more black-hole sources than workers stalled every other Revision for minutes, and
// Loading was never written.)
func TestBlackHoleSourceDelaysNoOtherRevision(t *testing.T) {
	testenv.Require(t, env)
	egress, err := source.NewEgressPolicy([]string{"127.0.0.1/32"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	startReplica(t, true, func(c *replicaConfig) { c.egress = egress })
	ns := env.Namespace(t, "blackhole")
	hole := blackHole(t)
	acme(t, ns)
	const stuck, healthy = 6, 4
	for i := range stuck {
		create(t, revision(ns, fmt.Sprintf("stuck-%d", i), "acme", "", func(r *v1.Revision) {
			r.Spec.Packs[0] = v1.Pack{Name: "main", URL: fmt.Sprintf("http://%s/pack-%d.wasm", hole, i), SHA256: strings.Repeat("a", 64)}
		}))
	}
	time.Sleep(500 * time.Millisecond) // the stuck ones are being loaded first
	start := time.Now()
	for i := range healthy {
		create(t, revision(ns, fmt.Sprintf("ok-%d", i), "acme", "ok.wasm"))
	}
	for i := range healthy {
		waitPhase(t, ns, fmt.Sprintf("ok-%d", i), v1.RevisionReady, "")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("healthy revisions took %v to become Ready behind a black-hole source", d.Round(time.Millisecond))
	}
	for i := range stuck {
		name := fmt.Sprintf("stuck-%d", i)
		eventually(t, name+" shows Loading with Reconciling=True", func() (bool, string) {
			rev := &v1.Revision{}
			if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, rev); err != nil {
				return false, err.Error()
			}
			c := meta.FindStatusCondition(rev.Status.Conditions, v1.ConditionReconciling)
			ok := rev.Status.Phase == v1.RevisionLoading && c != nil && c.Status == metav1.ConditionTrue &&
				rev.Status.ObservedGeneration == rev.Generation
			return ok, fmt.Sprintf("phase %s, reconciling %+v", rev.Status.Phase, c)
		})
	}
}
