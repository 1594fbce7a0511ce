package runtime_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/runtime"
)

type secrets map[string]string

func (s secrets) Secret(_ context.Context, name string) ([]byte, bool, error) {
	v, ok := s[name]
	return []byte(v), ok, nil
}

func TestInvoke(t *testing.T) {
	e := newEngine(t)
	ctx := context.Background()
	key := "k3y"
	rev := load(t, e, []revOpt{func(c *runtime.RevisionConfig) {
		c.Policy.Secrets = []string{"signing-key"}
		c.Policy.Env = []string{"REGION"}
		c.Secrets = secrets{"signing-key": key}
		c.Config = map[string]string{"REGION": "eu-west", "OTHER": "hidden"}
	}}, "echo", "webhook")

	out, err := rev.Invoke(ctx, runtime.InvokeRequest{ProviderType: "webhook", Op: "send", CorrelationID: "corr-7", Payload: json.RawMessage(`{"to":"x"}`)})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"idempotency_key":"corr-7"`) || !strings.Contains(string(out), `"to":"x"`) {
		t.Fatalf("send: %s", out)
	}

	out, err = rev.Invoke(ctx, runtime.InvokeRequest{ProviderType: "webhook", Op: "sign", Payload: json.RawMessage(`"msg"`)})
	if err != nil {
		t.Fatal(err)
	}
	mac := hmac.New(sha256.New, []byte(key))
	mac.Write([]byte(`"msg"`))
	if want := `{"signature":"` + hex.EncodeToString(mac.Sum(nil)) + `"}`; string(out) != want {
		t.Fatalf("sign: %s, want %s", out, want)
	}

	// Only allowlisted environment variables are visible, with values from config.
	out, err = rev.Invoke(ctx, runtime.InvokeRequest{ProviderType: "webhook", Op: "env"})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"has_other":false,"has_region":true,"region":"eu-west"}` {
		t.Fatalf("env: %s", out)
	}

	for _, tc := range []struct {
		name string
		req  runtime.InvokeRequest
		want error
	}{
		{"unknown provider type", runtime.InvokeRequest{ProviderType: "sms", Op: "send"}, runtime.ErrUnsupported},
		{"op outside the allowlist", runtime.InvokeRequest{ProviderType: "webhook", Op: "delete"}, runtime.ErrOpNotAllowed},
	} {
		if _, err := rev.Invoke(ctx, tc.req); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestSecretNeedsTenantAllowlist(t *testing.T) {
	rev := load(t, newEngine(t), []revOpt{func(c *runtime.RevisionConfig) {
		c.Secrets = secrets{"signing-key": "k"} // present, but the tenant does not allowlist it
	}}, "webhook")
	_, err := rev.Invoke(context.Background(), runtime.InvokeRequest{ProviderType: "webhook", Op: "sign", Payload: json.RawMessage(`1`)})
	if !errors.Is(err, runtime.ErrInvalidOutput) {
		t.Fatalf("a secret outside the tenant's allowlist was readable: %v", err)
	}
}

func TestInvokeFailsClosed(t *testing.T) {
	e := newEngine(t)
	ctx := context.Background()
	twin := packs.WithManifest(pack(t, "webhook"), `{"abi":1,"pack_id":"webhook-twin","version":"1","flows":[{"id":"in","entry":true}],
		"providers":[{"type":"webhook","ops":["send"]}],"capabilities":{"secrets":["signing-key"],"wasi":{"env":["REGION","OTHER"]}}}`)
	p1, err := e.Compile(ctx, pack(t, "webhook"))
	if err != nil {
		t.Fatal(err)
	}
	p2, err := e.Compile(ctx, twin)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := e.NewRevision(ctx, runtime.RevisionConfig{Name: "ns/twins", Packs: []*runtime.Pack{p1, p2}, Policy: allowAll})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rev.Invoke(ctx, runtime.InvokeRequest{ProviderType: "webhook", Op: "send"}); !errors.Is(err, runtime.ErrAmbiguous) {
		t.Fatalf("two packs binding one type: %v", err)
	}
	rev.Close(ctx)
	if _, err := rev.Invoke(ctx, runtime.InvokeRequest{ProviderType: "webhook", Op: "send"}); !errors.Is(err, runtime.ErrNotLoaded) {
		t.Fatalf("unloaded revision: %v", err)
	}
	if _, err := rev.Identify(ctx, runtime.IdentifyRequest{ProviderTypes: []string{"webhook"}}, false); !errors.Is(err, runtime.ErrNotLoaded) {
		t.Fatalf("identify on an unloaded revision: %v", err)
	}
}

// stuckStore commits only when its context ends, like a state store whose API server
// stopped answering.
type stuckStore struct{ *runtime.MemStore }

func (s stuckStore) Begin(ctx context.Context) (runtime.Txn, error) {
	txn, err := s.MemStore.Begin(ctx)
	return stuckTxn{txn}, err
}

type stuckTxn struct{ runtime.Txn }

func (stuckTxn) Commit(ctx context.Context) error {
	<-ctx.Done()
	return fmt.Errorf("wait for state commit: %w", ctx.Err())
}

// A provider invoke's state commit runs inside the revision's deadline, as an
// activity's does, even when the caller set none.
func TestInvokeCommitHasTheDeadline(t *testing.T) {
	e := newEngine(t)
	rev := load(t, e, []revOpt{func(c *runtime.RevisionConfig) {
		c.Store = stuckStore{runtime.NewMemStore()}
		c.Limits.Timeout = 200 * time.Millisecond
	}}, "echo", "webhook")
	err := within(t, 30*time.Second, "Invoke waited for a stuck state commit past the revision's deadline", func() error {
		_, err := rev.Invoke(context.Background(), runtime.InvokeRequest{ProviderType: "webhook", Op: "send", Payload: json.RawMessage(`{"to":"x"}`)})
		return err
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Invoke with a stuck commit: %v, want the deadline", err)
	}
}

// slowSecrets is a SecretSource whose reads wait for release (an API server that stalls),
// telling entered as each begins.
type slowSecrets struct {
	entered chan struct{}
	release chan struct{}
}

func (s slowSecrets) Secret(ctx context.Context, name string) ([]byte, bool, error) {
	s.entered <- struct{}{}
	select {
	case <-s.release:
	case <-ctx.Done():
	}
	return []byte("k"), true, nil
}

// A host call that waits on I/O runs no guest code, so it holds none of the tenant's
// processor tokens: secret reads stalled on the API server, as many as the tenant has
// tokens, leave its other guests running.
func TestStalledSecretReadsHoldNoProcessor(t *testing.T) {
	secrets := slowSecrets{entered: make(chan struct{}), release: make(chan struct{})}
	rev := load(t, newEngine(t), []revOpt{func(c *runtime.RevisionConfig) {
		c.Policy.Secrets = []string{"signing-key"}
		c.Secrets = secrets
		c.Limits.Timeout = time.Minute
	}}, "echo", "webhook")
	ctx := context.Background()
	tokens := max(1, goruntime.GOMAXPROCS(0)/2)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(secrets.release)
	for range tokens {
		wg.Go(func() {
			_, _ = rev.Invoke(ctx, runtime.InvokeRequest{ProviderType: "webhook", Op: "sign", Payload: json.RawMessage(`"m"`)})
		})
		<-secrets.entered
	}
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := rev.Handle(actx, msg(`{"ok":1}`)); err != nil {
		t.Fatalf("an activity while %d secret reads of its tenant stall: %v", tokens, err)
	}
}
