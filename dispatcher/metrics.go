package dispatcher

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the dispatcher's Prometheus series. They are served on the manager's
// metrics port, behind its authentication and authorization, never on the dispatcher's.
//
// Label values are bounded: a series is made only for a caller that was authenticated,
// so namespace and tenant name a Tenant that exists; revision is a revision loaded on
// this replica (or empty), and code is one of the statuses the dispatcher answers with.
// Refused callers are counted in one series without labels, whatever they sent.
type Metrics struct {
	unauth   prometheus.Counter
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	inflight *prometheus.GaugeVec
	// served holds each revision's series for answered activities, so the hot path
	// does not hash four label values per series per request.
	served sync.Map // revisionSeriesKey -> *revisionSeries
}

type revisionSeriesKey struct{ namespace, tenant, revision string }

type revisionSeries struct {
	ok       prometheus.Counter
	latency  prometheus.Observer
	inflight prometheus.Gauge
}

// NewMetrics registers the dispatcher's series with reg (controller-runtime's
// metrics.Registry in the manager).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		unauth: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "packhost_dispatcher_unauthenticated_total",
			Help: "Requests refused before authentication: unknown tenant, or a missing or wrong token. Not labelled, so callers cannot make series.",
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "packhost_dispatcher_requests_total", Help: "Activity requests by tenant, revision and HTTP status.",
		}, []string{"namespace", "tenant", "revision", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "packhost_dispatcher_request_duration_seconds", Help: "Activity request latency by tenant and revision.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"namespace", "tenant", "revision"}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "packhost_dispatcher_in_flight", Help: "Activities being served by tenant and revision.",
		}, []string{"namespace", "tenant", "revision"}),
	}
	reg.MustRegister(m.unauth, m.requests, m.latency, m.inflight)
	return m
}

// series returns a revision's series, creating them on its first activity.
func (m *Metrics) series(ns, tenant, revision string) *revisionSeries {
	key := revisionSeriesKey{ns, tenant, revision}
	if s, ok := m.served.Load(key); ok {
		return s.(*revisionSeries)
	}
	s, _ := m.served.LoadOrStore(key, &revisionSeries{
		ok:       m.requests.WithLabelValues(ns, tenant, revision, "200"),
		latency:  m.latency.WithLabelValues(ns, tenant, revision),
		inflight: m.inflight.WithLabelValues(ns, tenant, revision),
	})
	return s.(*revisionSeries)
}

func (m *Metrics) request(ns, tenant, revision string, status int, elapsed time.Duration) {
	if m == nil {
		return
	}
	if status != http.StatusOK {
		m.requests.WithLabelValues(ns, tenant, revision, strconv.Itoa(status)).Inc()
		return
	}
	s := m.series(ns, tenant, revision)
	s.ok.Inc()
	s.latency.Observe(elapsed.Seconds())
}

func (m *Metrics) inFlight(ns, tenant, revision string) func() {
	if m == nil {
		return func() {}
	}
	g := m.series(ns, tenant, revision).inflight
	g.Inc()
	return g.Dec
}

func (m *Metrics) unauthenticated() {
	if m != nil {
		m.unauth.Inc()
	}
}

// ForgetTenant removes a tenant's series, when it is deleted.
func (m *Metrics) ForgetTenant(namespace, tenant string) {
	m.forget(prometheus.Labels{"namespace": namespace, "tenant": tenant}, func(k revisionSeriesKey) bool {
		return k.namespace == namespace && k.tenant == tenant
	})
}

// ForgetRevision removes a revision's series, when it is unloaded.
func (m *Metrics) ForgetRevision(namespace, revision string) {
	m.forget(prometheus.Labels{"namespace": namespace, "revision": revision}, func(k revisionSeriesKey) bool {
		return k.namespace == namespace && k.revision == revision
	})
}

// forget removes the series matching labels, and the cached handles of those that match.
func (m *Metrics) forget(labels prometheus.Labels, match func(revisionSeriesKey) bool) {
	if m == nil {
		return
	}
	m.served.Range(func(k, _ any) bool {
		if match(k.(revisionSeriesKey)) {
			m.served.Delete(k)
		}
		return true
	})
	m.requests.DeletePartialMatch(labels)
	m.latency.DeletePartialMatch(labels)
	m.inflight.DeletePartialMatch(labels)
}
