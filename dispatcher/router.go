package dispatcher

import (
	"sync"
	"sync/atomic"
)

// TenantConfig is what the dispatcher needs of a Tenant, published by its controller.
type TenantConfig struct {
	// Namespace and Name identify the Tenant.
	Namespace string
	Name      string
	// Env scopes the tenant's session keys.
	Env string
	// Tokens maps each accepted bearer token to the caller it names (the key in the auth
	// Secret).
	Tokens map[string]string
	// RoutingCallers may choose a revision by tag or header.
	RoutingCallers []string
	// MaxBodyBytes bounds one activity.
	MaxBodyBytes int64
	// MaxConcurrentActivities is the Tenant's spec.limits.maxConcurrentActivities; the
	// tenant's share of the dispatcher is derived from it (see tenantShare). Zero means
	// the CRD's default, 16.
	MaxConcurrentActivities int

	// hashes are the SHA-256 sums of Tokens, made once when the config is published.
	hashes []tokenHash
}

// Router holds what controllers publish for the dispatcher: each tenant's config and its
// routing table, each swapped atomically, and counts of dispatched activities.
type Router struct {
	// OnRemove, when set, is called when a tenant is removed (the dispatcher's metrics
	// forget it). Set it before the first publish.
	OnRemove func(namespace, name string)

	mu      sync.RWMutex
	tenants map[string]*tenantEntry
	// analyzed counts the tenants whose activities are counted for analysis.
	analyzed atomic.Int64
}

type tenantEntry struct {
	// active counts the tenant's requests in the dispatcher, from authentication to
	// answer (see admit).
	active atomic.Int64
	config atomic.Pointer[TenantConfig]
	table  atomic.Pointer[Table]
	counts sync.Map // revision name -> *atomic.Int64
	// tally counts activities for a canary rollout's analysis (see Analyze); nil when
	// the tenant's split has no analysis.
	tally atomic.Pointer[tally]
}

// NewRouter returns an empty router.
func NewRouter() *Router { return &Router{tenants: map[string]*tenantEntry{}} }

func tenantKey(namespace, name string) string { return namespace + "/" + name }

func (r *Router) entry(namespace, name string, create bool) *tenantEntry {
	key := tenantKey(namespace, name)
	r.mu.RLock()
	e := r.tenants[key]
	r.mu.RUnlock()
	if e != nil || !create {
		return e
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e = r.tenants[key]; e == nil {
		e = &tenantEntry{}
		r.tenants[key] = e
	}
	return e
}

// PublishTenant sets a tenant's config; nil removes the tenant. The router owns c from
// then on: it must not be changed.
func (r *Router) PublishTenant(namespace, name string, c *TenantConfig) {
	if c == nil {
		if e := r.entry(namespace, name, false); e != nil && e.config.Swap(nil) != nil && r.OnRemove != nil {
			r.OnRemove(namespace, name)
		}
		return
	}
	c.hashes = hashTokens(c.Tokens)
	r.entry(namespace, name, true).config.Store(c)
}

// PublishTable swaps in a tenant's routing table; nil removes it.
func (r *Router) PublishTable(namespace, tenant string, t *Table) {
	if t == nil {
		if e := r.entry(namespace, tenant, false); e != nil {
			e.table.Store(nil)
		}
		return
	}
	r.entry(namespace, tenant, true).table.Store(t)
}

// Tenant returns a tenant's config and table (either may be nil).
func (r *Router) Tenant(namespace, name string) (*TenantConfig, *Table) {
	e := r.entry(namespace, name, false)
	if e == nil {
		return nil, nil
	}
	return e.config.Load(), e.table.Load()
}

// Count records one activity dispatched to a revision; Dispatched reports the sums.
func (r *Router) Count(namespace, tenant, revision string) {
	e := r.entry(namespace, tenant, true)
	c, ok := e.counts.Load(revision)
	if !ok {
		c, _ = e.counts.LoadOrStore(revision, new(atomic.Int64))
	}
	c.(*atomic.Int64).Add(1)
}

// Dispatched returns how many activities this replica dispatched to each revision of a tenant.
func (r *Router) Dispatched(namespace, tenant string) map[string]int64 {
	out := map[string]int64{}
	e := r.entry(namespace, tenant, false)
	if e == nil {
		return out
	}
	e.counts.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	return out
}
