package state_test

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/uuid"

	"github.com/packhost/packhost/internal/testenv"
	"github.com/packhost/packhost/runtime"
	"github.com/packhost/packhost/state"
)

// Two replicas invoke one correlation id concurrently, each call with its own payload,
// which the op echoes: all get the answer of one run, and the record of it pins no
// session.
func TestInvokeOnceAcrossReplicas(t *testing.T) {
	testenv.Require(t, env)
	spec := state.Spec{Namespace: env.Namespace(t, "invoke"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 4}
	s1, s2 := newStore(t, state.Options{}), newStore(t, state.Options{})
	replicas := []*runtime.Revision{runtimeOn(t, ensure(t, s1, spec), "webhook"), runtimeOn(t, ensure(t, s2, spec), "webhook")}
	answers := make([]string, 16)
	var wg sync.WaitGroup
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := replicas[i%2].Invoke(context.Background(), runtime.InvokeRequest{ProviderType: "webhook", Op: "send",
				CorrelationID: "order-42", Payload: json.RawMessage(strconv.Itoa(i))})
			if err != nil {
				t.Errorf("invoke %d: %v", i, err)
				return
			}
			answers[i] = string(out)
		}()
	}
	wg.Wait()
	for i, a := range answers {
		if a != answers[0] {
			t.Fatalf("invoke %d answered %s, invoke 0 %s: the op ran more than once", i, a, answers[0])
		}
	}
	if n := s1.OpenSessions(spec.Namespace, spec.Revision, time.Now()); n != 0 {
		t.Fatalf("invoke records count as %d open sessions", n)
	}
}
