package controllers

import (
	"context"
	"errors"
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

// errSecretNotOptedIn: a Secret named for a tenant does not list it in its
// v1.AnnotationTenants annotation, so it serves nobody.
var errSecretNotOptedIn = errors.New("secret does not opt in")

// readOptedIn reads a Secret with reader (uncached: packhost needs only `get` on
// Secrets and never caches every Secret in the cluster) and checks that it opts in to
// serving tenant. what names its use in messages ("auth Secret").
func readOptedIn(ctx context.Context, reader client.Reader, namespace, name, tenant, what string) (*corev1.Secret, error) {
	sec := &corev1.Secret{}
	if err := reader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, sec); err != nil {
		return nil, fmt.Errorf("read %s %q: %w", what, name, err)
	}
	if !v1.SecretServesTenant(sec.Annotations, tenant) {
		return nil, fmt.Errorf("%w: %s %q does not serve tenant %s: add the annotation %s: %s to it (a comma-separated list of tenants)",
			errSecretNotOptedIn, what, name, tenant, v1.AnnotationTenants, tenant)
	}
	return sec, nil
}

// tenantSecrets gives guests the keys of the tenant's allowlisted Secrets by name, from
// Secrets that opt in to serving the tenant.
type tenantSecrets struct {
	reader    client.Reader
	namespace string
	tenant    string
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
		sec, err := readOptedIn(ctx, s.reader, s.namespace, n.Name, s.tenant, "allowlisted Secret")
		if err != nil {
			return nil, err
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
