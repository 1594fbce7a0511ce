package runtime_test

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/packhost/packhost/runtime"
)

// conflictingStore fails the first n commits that write something with a conflict, as
// a store with other writers on the same keys would.
type conflictingStore struct {
	*runtime.MemStore
	n atomic.Int64
}

func (s *conflictingStore) Begin(ctx context.Context) (runtime.Txn, error) {
	txn, err := s.MemStore.Begin(ctx)
	return &conflictingTxn{Txn: txn, s: s}, err
}

type conflictingTxn struct {
	runtime.Txn
	s      *conflictingStore
	writes bool
}

func (t *conflictingTxn) SetWaits(session string, ws []runtime.Wait) {
	t.writes = true
	t.Txn.SetWaits(session, ws)
}

func (t *conflictingTxn) Commit(ctx context.Context) error {
	if t.writes && t.s.n.Add(-1) >= 0 {
		t.Txn.Discard()
		return &runtime.ConflictError{Key: "injected"}
	}
	return t.Txn.Commit(ctx)
}

// Concurrent and repeated invokes with one correlation id, under injected conflicts,
// all get the answer of one run of the op: each call sends its own payload, which the
// op echoes, so a second run would show in the answers.
func TestInvokeAtMostOncePerCorrelationID(t *testing.T) {
	e := newEngine(t)
	store := &conflictingStore{MemStore: runtime.NewMemStore()}
	store.n.Store(5)
	rev := load(t, e, []revOpt{func(c *runtime.RevisionConfig) { c.Store = store }}, "webhook")
	ctx := context.Background()
	answers := make([]string, 16)
	var wg sync.WaitGroup
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := rev.Invoke(ctx, runtime.InvokeRequest{ProviderType: "webhook", Op: "send", CorrelationID: "corr-1",
				Payload: json.RawMessage(strconv.Itoa(i))})
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
	// A repeat later gets the stored answer; another id runs the op.
	out, err := rev.Invoke(ctx, runtime.InvokeRequest{ProviderType: "webhook", Op: "send", CorrelationID: "corr-1", Payload: json.RawMessage(`"again"`)})
	if err != nil || string(out) != answers[0] {
		t.Fatalf("repeat: %s %v, want %s", out, err, answers[0])
	}
	out, err = rev.Invoke(ctx, runtime.InvokeRequest{ProviderType: "webhook", Op: "send", CorrelationID: "corr-2", Payload: json.RawMessage(`"other"`)})
	if err != nil || !json.Valid(out) || string(out) == answers[0] {
		t.Fatalf("another correlation id: %s %v", out, err)
	}
	if store.Waits() != 2 {
		t.Fatalf("%d records kept, want one per correlation id", store.Waits())
	}
}

// An op that fails keeps nothing, not even its claim: a retry with the same
// correlation id runs it.
func TestInvokeFailureDoesNotClaimTheID(t *testing.T) {
	e := newEngine(t)
	store := runtime.NewMemStore()
	rev := load(t, e, []revOpt{func(c *runtime.RevisionConfig) { c.Store = store }}, "webhook")
	ctx := context.Background()
	_, err := rev.Invoke(ctx, runtime.InvokeRequest{ProviderType: "webhook", Op: "sign", CorrelationID: "c", Payload: json.RawMessage(`1`)})
	if err == nil || errors.Is(err, runtime.ErrInProgress) {
		t.Fatalf("sign without a secret: %v, want the op's failure", err)
	}
	if store.Waits() != 0 {
		t.Fatalf("a failed op left %d records", store.Waits())
	}
	out, err := rev.Invoke(ctx, runtime.InvokeRequest{ProviderType: "webhook", Op: "send", CorrelationID: "c", Payload: json.RawMessage(`2`)})
	if err != nil || !json.Valid(out) {
		t.Fatalf("retry after a failure: %s %v", out, err)
	}
}
