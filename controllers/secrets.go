package controllers

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/packhost/packhost/api/v1alpha1"
)

// secretTTL is how long a read of the tenant's Secrets is reused, so a rotated secret
// reaches guests within this time without an API read per guest call.
const secretTTL = 30 * time.Second

// tenantSecrets gives guests the keys of the tenant's allowlisted Secrets by name. It
// reads the Secrets directly (packhost never caches every Secret in the cluster).
type tenantSecrets struct {
	reader    client.Reader
	namespace string
	names     []v1.LocalObjectReference

	mu      sync.Mutex
	values  map[string][]byte
	fetched time.Time
}

func (s *tenantSecrets) load(ctx context.Context) (map[string][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.values != nil && time.Since(s.fetched) < secretTTL {
		return s.values, nil
	}
	values := map[string][]byte{}
	for _, n := range s.names {
		sec := &corev1.Secret{}
		if err := s.reader.Get(ctx, types.NamespacedName{Namespace: s.namespace, Name: n.Name}, sec); err != nil {
			return nil, fmt.Errorf("read allowlisted Secret %s/%s: %w", s.namespace, n.Name, err)
		}
		for k, v := range sec.Data {
			values[k] = v
		}
	}
	s.values, s.fetched = values, time.Now()
	return values, nil
}

// Secret implements runtime.SecretSource.
func (s *tenantSecrets) Secret(ctx context.Context, name string) ([]byte, bool, error) {
	values, err := s.load(ctx)
	if err != nil {
		return nil, false, err
	}
	v, ok := values[name]
	return v, ok, nil
}

func (s *tenantSecrets) keys(ctx context.Context) ([]string, error) {
	values, err := s.load(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(values))
	for k := range values {
		out = append(out, k)
	}
	sort.Strings(out)
	return out, nil
}
