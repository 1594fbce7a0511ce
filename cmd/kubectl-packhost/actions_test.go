package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/internal/testenv"
)

var (
	env        *testenv.Env
	kubeconfig string
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Run(m, &env, func(e *testenv.Env) error {
		dir, err := os.MkdirTemp("", "kubectl-packhost-test-")
		if err != nil {
			return err
		}
		kubeconfig, err = e.KubeconfigFile(dir)
		return err
	}))
}

// syncBuffer is a bytes.Buffer that a running command writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// plugin runs `kubectl packhost args...` against the test API server as a user would
// (through the kubeconfig flag), at clock time now, and returns what it printed.
func plugin(ctx context.Context, now time.Time, out *syncBuffer, args ...string) error {
	root := newRootCommand(&options{
		flags:   genericclioptions.NewConfigFlags(false),
		streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: out, ErrOut: out},
		now:     func() time.Time { return now },
	})
	root.SetArgs(append([]string{"--kubeconfig", kubeconfig}, args...))
	return root.ExecuteContext(ctx)
}

// newSplit creates a split in ns; with a strategy, and a rollout in phase (empty: none).
func newSplit(t *testing.T, ns, name string, strategy bool, phase v1.RolloutPhase) *v1.TrafficSplit {
	t.Helper()
	ctx := context.Background()
	if ns != "default" {
		if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); client.IgnoreAlreadyExists(err) != nil {
			t.Fatal(err)
		}
	}
	s := &v1.TrafficSplit{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1.TrafficSplitSpec{
			TenantRef: v1.LocalObjectReference{Name: "acme"},
			Routes:    []v1.Route{{RevisionName: "acme-bot-v2", Percent: 100}},
		},
	}
	if strategy {
		s.Spec.Strategy = &v1.TrafficSplitStrategy{Canary: &v1.CanaryStrategy{Steps: []v1.CanaryStep{{Weight: 10}, {Weight: 100}}}}
	}
	if err := env.Client.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), s) })
	if phase != "" {
		setPhase(t, s, phase)
	}
	return s
}

// setPhase writes the rollout's phase to status, as the controller would.
func setPhase(t *testing.T, s *v1.TrafficSplit, phase v1.RolloutPhase) {
	t.Helper()
	s.Status.Rollout = &v1.RolloutStatus{Phase: phase, StepStartTime: &metav1.Time{Time: time.Now()},
		StableRoutes: []v1.RouteStatus{{RevisionName: "acme-bot-v1", Percent: 100}},
		TargetRoutes: []v1.RouteStatus{{RevisionName: "acme-bot-v2", Percent: 100}}}
	s.Status.Routes = []v1.RouteStatus{{RevisionName: "acme-bot-v1", Percent: 90}, {RevisionName: "acme-bot-v2", Percent: 10}}
	if err := env.Client.Status().Update(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

func annotations(t *testing.T, s *v1.TrafficSplit) map[string]string {
	t.Helper()
	got := &v1.TrafficSplit{}
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(s), got); err != nil {
		t.Fatal(err)
	}
	return got.Annotations
}

var (
	t0 = time.Date(2026, 11, 26, 17, 0, 0, 0, time.UTC)
	t1 = t0.Add(time.Second)
)

// Each action sets its annotation to the time of the call, a new value each time, and
// touches nothing else; it is refused, changing nothing, where the controller would
// have nothing to act on.
func TestActions(t *testing.T) {
	testenv.Require(t, env)
	ctx := context.Background()

	t.Run("promote and abort a rollout in progress, again and again", func(t *testing.T) {
		for _, phase := range []v1.RolloutPhase{v1.RolloutPaused, v1.RolloutProgressing} {
			s := newSplit(t, "default", "running-"+strings.ToLower(string(phase)), true, phase)
			for _, verb := range []string{"promote", "abort"} {
				annotation := "packhost.io/" + verb
				for _, now := range []time.Time{t0, t1} {
					var out syncBuffer
					if err := plugin(ctx, now, &out, verb, s.Name); err != nil {
						t.Fatalf("%s at %s: %v\n%s", verb, phase, err, out.String())
					}
					want := now.Format(time.RFC3339Nano)
					if got := annotations(t, s)[annotation]; got != want {
						t.Fatalf("%s at %s: %s=%q, want %q", verb, phase, annotation, got, want)
					}
					if !strings.Contains(out.String(), verb+" requested") {
						t.Errorf("%s printed %q", verb, out.String())
					}
				}
			}
			if got := annotations(t, s); len(got) != 2 {
				t.Errorf("the actions left annotations %v, want promote and abort only", got)
			}
		}
	})

	t.Run("retry an aborted rollout", func(t *testing.T) {
		s := newSplit(t, "default", "aborted", true, v1.RolloutAborted)
		var out syncBuffer
		if err := plugin(ctx, t0, &out, "retry", s.Name); err != nil {
			t.Fatalf("retry: %v\n%s", err, out.String())
		}
		if got := annotations(t, s)[v1.AnnotationRetry]; got != t0.Format(time.RFC3339Nano) {
			t.Fatalf("retry set %q", got)
		}
	})

	t.Run("the namespace flag picks the split", func(t *testing.T) {
		s := newSplit(t, "plugin-other", "elsewhere", true, v1.RolloutPaused)
		var out syncBuffer
		if err := plugin(ctx, t0, &out, "promote", s.Name); err == nil || !strings.Contains(err.Error(), `trafficsplit "elsewhere" not found in namespace "default"`) {
			t.Fatalf("promote without -n: %v", err)
		}
		if err := plugin(ctx, t0, &out, "promote", s.Name, "-n", "plugin-other"); err != nil {
			t.Fatalf("promote -n plugin-other: %v\n%s", err, out.String())
		}
		if got := annotations(t, s)[v1.AnnotationPromote]; got == "" {
			t.Fatal("promote -n did not annotate the split")
		}
	})

	refused := []struct {
		name     string
		split    func(t *testing.T) *v1.TrafficSplit
		verb     string
		splitArg string
		want     string
	}{
		{"a missing split", func(*testing.T) *v1.TrafficSplit { return nil }, "promote", "nope", `trafficsplit "nope" not found in namespace "default"`},
		{"a split without a strategy", func(t *testing.T) *v1.TrafficSplit { return newSplit(t, "default", "plain", false, "") }, "promote", "plain",
			`trafficsplit "plain" has no spec.strategy.canary`},
		{"promote with no rollout yet", func(t *testing.T) *v1.TrafficSplit { return newSplit(t, "default", "idle", true, "") }, "promote", "idle",
			`trafficsplit "idle" has no rollout in progress (rollout not started)`},
		{"promote a finished rollout", func(t *testing.T) *v1.TrafficSplit {
			return newSplit(t, "default", "done", true, v1.RolloutSucceeded)
		}, "promote", "done", `trafficsplit "done" has no rollout in progress (rollout Succeeded)`},
		{"promote an aborted rollout", func(t *testing.T) *v1.TrafficSplit {
			return newSplit(t, "default", "stopped", true, v1.RolloutAborted)
		}, "promote", "stopped", `has no rollout in progress (rollout Aborted)`},
		{"abort with no rollout yet", func(t *testing.T) *v1.TrafficSplit { return newSplit(t, "default", "idle2", true, "") }, "abort", "idle2",
			`has no rollout in progress`},
		{"retry a running rollout", func(t *testing.T) *v1.TrafficSplit {
			return newSplit(t, "default", "busy", true, v1.RolloutPaused)
		}, "retry", "busy", `trafficsplit "busy" has no aborted rollout to retry (rollout Paused)`},
	}
	for _, tc := range refused {
		t.Run("refuses "+tc.name, func(t *testing.T) {
			s := tc.split(t)
			var out syncBuffer
			err := plugin(ctx, t0, &out, tc.verb, tc.splitArg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%s %s: got %v, want an error with %q", tc.verb, tc.splitArg, err, tc.want)
			}
			if s != nil {
				if got := annotations(t, s); len(got) != 0 {
					t.Fatalf("a refused %s changed the annotations: %v", tc.verb, got)
				}
			}
		})
	}
}

func TestGet(t *testing.T) {
	testenv.Require(t, env)
	ctx := context.Background()
	s := newSplit(t, "default", "shown", true, v1.RolloutPaused)

	var out syncBuffer
	if err := plugin(ctx, t0, &out, "get", "split", s.Name); err != nil {
		t.Fatalf("get: %v\n%s", err, out.String())
	}
	// What get prints is render's output for the object as the API server holds it.
	stored := &v1.TrafficSplit{}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(s), stored); err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	if err := render(&want, stored, t0); err != nil {
		t.Fatal(err)
	}
	if out.String() != want.String() || !strings.Contains(out.String(), "Paused: waiting for a promote") {
		t.Fatalf("get printed:\n%s\nwant:\n%s", out.String(), want.String())
	}

	for _, args := range [][]string{{"get", "split", "nope"}, {"get", "revision", s.Name}, {"get", "split"}} {
		var out syncBuffer
		if err := plugin(ctx, t0, &out, args...); err == nil {
			t.Errorf("%v succeeded:\n%s", args, out.String())
		}
	}
}

// --watch shows the split again when it changes, and ends when it is deleted.
func TestGetWatch(t *testing.T) {
	testenv.Require(t, env)
	s := newSplit(t, "default", "watched", true, v1.RolloutProgressing)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- plugin(ctx, t0, &out, "get", "split", s.Name, "--watch") }()

	waitOutput := func(what string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for !strings.Contains(out.String(), what) {
			if time.Now().After(deadline) {
				t.Fatalf("--watch did not show %q within 60s; it showed:\n%s", what, out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitOutput("Status:      Progressing")
	setPhase(t, s, v1.RolloutAborted)
	waitOutput("Status:      Aborted")
	if err := env.Client.Delete(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	waitOutput(`trafficsplit "watched" was deleted`)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("--watch ended with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("--watch did not end after the split was deleted")
	}
	if n := strings.Count(out.String(), "Name:"); n != 2 {
		t.Errorf("--watch showed the split %d times for 2 versions:\n%s", n, out.String())
	}
}
