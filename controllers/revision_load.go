package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/go-logr/logr"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/runtime"
	"github.com/packhost/packhost/source"
	"github.com/packhost/packhost/state"
)

// loadInput is what a load needs, gathered by Reconcile and copied, since the load
// runs on a loader worker after Reconcile returned.
type loadInput struct {
	rev    *v1.Revision
	tenant *v1.Tenant
	limits runtime.Limits
	// maxBody is the largest activity the revision takes (its own limit or its tenant's).
	maxBody int64
	key     string
	log     logr.Logger
}

// load fetches, verifies and compiles the revision's packs, ensures its state and
// starts its runtime. It runs on the background loader, never inside Reconcile.
func (r *RevisionReconciler) load(ctx context.Context, in loadInput, fetching originSlot) (*Loaded, *failure) {
	rev, tenant, limits := in.rev, in.tenant, in.limits
	ctx = logr.NewContext(ctx, in.log)
	l := &Loaded{UID: rev.UID, Key: in.key, Tenant: tenant.Name, Shards: int(rev.Spec.State.Shards), MaxBodyBytes: in.maxBody}
	var compiled []*runtime.Pack
	release := func() {
		for _, p := range compiled {
			r.Engine.Release(ctx, p)
		}
	}
	if f := r.pullSecretsOptIn(ctx, rev); f != nil {
		return nil, f
	}
	for _, p := range rev.Spec.Packs {
		p, resolved := pinned(p, rev.Status.Packs)
		fetched, err := r.fetchFrom(ctx, fetching, rev, p, resolved)
		if err != nil {
			release()
			return nil, fetchFailure(p.Name, err)
		}
		pack, err := r.Engine.Compile(ctx, fetched.Bytes)
		if err != nil {
			release()
			return nil, compileFailure(p.Name, err)
		}
		compiled = append(compiled, pack)
		l.Packs = append(l.Packs, v1.PackStatus{
			Name: p.Name, Digest: fetched.Digest, Size: int64(len(fetched.Bytes)), ResolvedImage: fetched.ResolvedImage,
			PackID: pack.Manifest.PackID, Version: pack.Manifest.Version,
		})
	}

	spec := state.Spec{Namespace: rev.Namespace, Revision: rev.Name, RevisionUID: rev.UID, Tenant: tenant.Name, Shards: int(rev.Spec.State.Shards)}
	names, err := r.State.Ensure(ctx, spec)
	if err != nil {
		release()
		return nil, &failure{v1.RevisionStateReady, v1.ReasonStateFailed, err.Error(), true}
	}
	l.StateConfigMaps = names

	secrets := &tenantSecrets{reader: r.APIReader, namespace: rev.Namespace, tenant: tenant.Name, names: tenant.Spec.Secrets}
	policy, err := r.policy(ctx, tenant, secrets)
	if err != nil {
		release()
		return nil, secretFailure(err)
	}
	rt, err := r.Engine.NewRevision(ctx, runtime.RevisionConfig{
		Name: rev.Namespace + "/" + rev.Name, Env: tenant.Spec.Env, Tenant: rev.Namespace + "/" + tenant.Name,
		Packs: compiled, Config: rev.Spec.Config, Policy: policy, Limits: limits,
		Store: r.State.Namespace(spec), Secrets: secrets, Clock: r.Clock,
		Logger: in.log,
	})
	if err != nil { // NewRevision released the packs
		return nil, compileFailure("", err)
	}
	l.Runtime = rt
	return l, nil
}

// fetchFrom fetches pack p holding a loader slot of its origin, if it has one.
func (r *RevisionReconciler) fetchFrom(ctx context.Context, fetching originSlot, rev *v1.Revision, p v1.Pack, resolved string) (*source.Fetched, error) {
	if origin := sourceOrigin(p); origin != "" {
		release, ok := fetching(ctx, origin)
		if !ok {
			return nil, fmt.Errorf("waited for a loader slot of %s until the load's deadline: %w", origin, ctx.Err())
		}
		defer release()
	}
	return r.fetch(ctx, rev, p, resolved)
}

// pinned is what to fetch for pack p given the packs status records: the image a tag
// resolved to, and for a ConfigMap source without sha256, the digest first loaded as
// the sha256 to verify, so a ConfigMap that changed since is refused (DigestMismatch)
// rather than run as other code under the same Revision.
func pinned(p v1.Pack, status []v1.PackStatus) (v1.Pack, string) {
	i := slices.IndexFunc(status, func(s v1.PackStatus) bool { return s.Name == p.Name })
	if i < 0 {
		return p, ""
	}
	if p.ConfigMapRef != nil && p.SHA256 == "" {
		p.SHA256 = strings.TrimPrefix(status[i].Digest, "sha256:")
	}
	return p, status[i].ResolvedImage
}

// pullSecretsOptIn checks that every image pull Secret of a Revision with an image
// source opts in to serving the Revision's tenant.
func (r *RevisionReconciler) pullSecretsOptIn(ctx context.Context, rev *v1.Revision) *failure {
	if !slices.ContainsFunc(rev.Spec.Packs, func(p v1.Pack) bool { return p.Image != "" }) {
		return nil
	}
	for _, ref := range rev.Spec.ImagePullSecrets {
		_, err := readOptedIn(ctx, r.APIReader, rev.Namespace, ref.Name, rev.Spec.TenantRef.Name, "image pull Secret")
		switch {
		case errors.Is(err, errSecretNotOptedIn):
			return &failure{v1.RevisionPacksFetched, v1.ReasonSecretNotOptedIn, err.Error(), true}
		case err != nil:
			return &failure{v1.RevisionPacksFetched, v1.ReasonSourceUnreachable, err.Error(), true}
		}
	}
	return nil
}

func (r *RevisionReconciler) policy(ctx context.Context, tenant *v1.Tenant, secrets *tenantSecrets) (runtime.Policy, error) {
	p := tenant.Spec.Policy
	on := func(b *bool) bool { return b == nil || *b }
	pol := runtime.Policy{
		StateRead: on(p.State.Read), StateWrite: on(p.State.Write),
		Clocks: on(p.WASI.Clocks), Random: on(p.WASI.Random), Env: p.WASI.Env,
	}
	if p.Secrets {
		names, err := secrets.keys(ctx)
		if err != nil {
			return pol, err
		}
		pol.Secrets = names
	}
	return pol, nil
}
