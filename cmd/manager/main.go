// Command manager runs the packhost operator: the controllers that reconcile Tenants,
// Revisions and TrafficSplits, with metrics, health probes and optional leader election.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"go.opentelemetry.io/otel/trace"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	packhostv1alpha1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/internal/tracing"
	"github.com/packhost/packhost/source"
)

// leaderElectionID names the Lease the replicas compete for.
const leaderElectionID = "manager.packhost.io"

// options are the manager's command-line settings.
type options struct {
	metricsAddr             string
	metricsSecure           bool
	metricsCertPath         string
	metricsCertName         string
	metricsCertKey          string
	enableHTTP2             bool
	probeAddr               string
	leaderElect             bool
	leaderElectionNamespace string
	watchNamespaces         []string
	cacheDir                string
	cacheLimit              resource.Quantity
	gracefulShutdown        time.Duration
	insecureRegistries      bool
	sourceAllow             []string
	sourceDeny              []string
	dispatcherAddr          string
	maxInFlight             int
	pprofAddr               string
	memoryBudget            int64
	replicaName             string
	// skipNameValidation lets a test run a second manager in one process (controller
	// names must otherwise be unique per process).
	skipNameValidation bool
}

func (o *options) bind(fs *flag.FlagSet) {
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8443", "Address the Prometheus metrics endpoint binds to (it serves every metric, the dispatcher's included); 0 disables it.")
	fs.BoolVar(&o.metricsSecure, "metrics-secure", true, "Serve metrics over HTTPS, to callers authenticated by a TokenReview and authorized by a SubjectAccessReview for GET /metrics (the metrics-reader ClusterRole). --metrics-secure=false serves plain HTTP to anyone who can reach the port.")
	fs.StringVar(&o.metricsCertPath, "metrics-cert-path", "", "Directory holding the metrics server's certificate and key; empty uses a self-signed certificate.")
	fs.StringVar(&o.metricsCertName, "metrics-cert-name", "tls.crt", "File name of the metrics server's certificate in --metrics-cert-path.")
	fs.StringVar(&o.metricsCertKey, "metrics-cert-key", "tls.key", "File name of the metrics server's key in --metrics-cert-path.")
	fs.BoolVar(&o.enableHTTP2, "enable-http2", false, "Serve metrics over HTTP/2 too; off by default against the HTTP/2 Stream Cancellation and Rapid Reset CVEs.")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "Address the /healthz and /readyz endpoints bind to.")
	fs.BoolVar(&o.leaderElect, "leader-elect", false, "Elect a leader among replicas; only the leader writes status. Enable it when running more than one replica.")
	fs.StringVar(&o.leaderElectionNamespace, "leader-election-namespace", "", "Namespace of the leader election Lease; defaults to the manager's own namespace.")
	fs.Func("watch-namespaces", "Comma-separated namespaces whose Tenants, Revisions, TrafficSplits and state ConfigMaps the manager watches; empty watches all. With it the manager needs only Roles in those namespaces (see config/namespaced). Repeatable.", func(v string) error {
		o.watchNamespaces = append(o.watchNamespaces, splitList(v)...)
		return nil
	})
	fs.StringVar(&o.cacheDir, "cache-dir", defaultCacheDir(), "Directory for fetched packs and the compilation cache; must be writable.")
	o.cacheLimit = resource.MustParse("1Gi")
	fs.Func("cache-limit", "Most bytes the cache directory may hold (a quantity: 1Gi, 500Mi); the least recently written files beyond it are removed, never a pack a loaded revision runs. 0 turns pruning off. Keep it under the volume's size limit. (default 1Gi)", func(v string) error {
		q, err := resource.ParseQuantity(v)
		if err != nil || q.Sign() < 0 {
			return fmt.Errorf("want a non-negative quantity such as 1Gi or 500Mi, got %q", v)
		}
		o.cacheLimit = q
		return nil
	})
	fs.StringVar(&o.replicaName, "replica-name", "", "Names this replica in the counts it publishes for the analysis of canary rollouts; empty uses the host name, which is the pod's name in Kubernetes. Replicas sharing a host (tests, local runs) need a name each, or their counts overwrite each other.")
	fs.StringVar(&o.dispatcherAddr, "dispatcher-bind-address", ":8090", "Address the activity dispatcher binds to; 0 disables it.")
	fs.StringVar(&o.pprofAddr, "pprof-bind-address", "", "Address of the Go pprof endpoints; empty disables them.")
	fs.IntVar(&o.maxInFlight, "max-in-flight", 1024, "Activities this replica serves at once; more are refused with 429.")
	fs.BoolVar(&o.insecureRegistries, "insecure-registries", false, "Pull image sources over plain http (local registries only).")
	fs.Func("source-allow", "Comma-separated CIDRs, IP addresses and host names that url and image sources may reach although the egress policy refuses them by default (loopback, private, link-local, multicast and reserved addresses), e.g. 127.0.0.1/32,registry.internal. A host name may then resolve to any address. Repeatable.", func(v string) error {
		entries := splitList(v)
		if _, err := source.NewEgressPolicy(entries, nil); err != nil {
			return err
		}
		o.sourceAllow = append(o.sourceAllow, entries...)
		return nil
	})
	fs.Func("source-deny", "Comma-separated CIDRs that url and image sources may never reach, on top of the default policy: give the cluster's pod and service CIDRs, which vary per cluster, e.g. 10.96.0.0/12,10.244.0.0/16. A more specific --source-allow CIDR wins. Repeatable.", func(v string) error {
		entries := splitList(v)
		if _, err := source.NewEgressPolicy(nil, entries); err != nil {
			return err
		}
		o.sourceDeny = append(o.sourceDeny, entries...)
		return nil
	})
	fs.DurationVar(&o.gracefulShutdown, "graceful-shutdown-timeout", 30*time.Second, "How long in-flight work may take to finish on shutdown.")
	o.memoryBudget = defaultMemoryBudget(cgroupMemoryFiles)
	fs.Func("memory-budget", "Most memory guests may hold on this replica (a quantity: 1Gi, 800Mi): compiled packs, instances and activities' host buffers. Past it idle instances are closed, then activities get 429 and packs that cannot fit are not loaded here. 0 turns it off. (default 70% of the container's memory limit, none without one)", func(v string) error {
		q, err := resource.ParseQuantity(v)
		if err != nil {
			return err
		}
		o.memoryBudget = q.Value()
		return nil
	})
}

// splitList splits a comma-separated flag value, dropping empty entries.
func splitList(v string) []string {
	var out []string
	for _, e := range strings.Split(v, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

func defaultCacheDir() string {
	if dir, err := os.UserCacheDir(); err == nil {
		return dir + "/packhost"
	}
	return os.TempDir() + "/packhost"
}

func newScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(packhostv1alpha1.AddToScheme(s))
	return s
}

func main() {
	var o options
	o.bind(flag.CommandLine)
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()

	log := zap.New(zap.UseFlagOptions(&zapOpts))
	ctrl.SetLogger(log)

	cfg, err := ctrl.GetConfig()
	if err != nil {
		log.Error(err, "Cannot find a Kubernetes API server to talk to")
		os.Exit(1)
	}
	if err := run(ctrl.SetupSignalHandler(), cfg, o, log); err != nil {
		log.Error(err, "Manager stopped")
		os.Exit(1)
	}
}

// metricsOptions serves metrics as kubebuilder scaffolds it: over HTTPS behind
// controller-runtime's authentication and authorization filter unless --metrics-secure
// is false, and without HTTP/2 unless --enable-http2.
func metricsOptions(o options) metricsserver.Options {
	opts := metricsserver.Options{
		BindAddress:   o.metricsAddr,
		SecureServing: o.metricsSecure,
		CertDir:       o.metricsCertPath,
		CertName:      o.metricsCertName,
		KeyName:       o.metricsCertKey,
	}
	if !o.enableHTTP2 {
		opts.TLSOpts = append(opts.TLSOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}
	if o.metricsSecure {
		opts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	return opts
}

// The metrics filter authenticates each scrape with a TokenReview and authorizes it
// with a SubjectAccessReview for the non-resource URL /metrics.
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// cacheOptions limits the manager's watches to --watch-namespaces, when given.
func cacheOptions(o options) cache.Options {
	if len(o.watchNamespaces) == 0 {
		return cache.Options{}
	}
	namespaces := map[string]cache.Config{}
	for _, ns := range o.watchNamespaces {
		namespaces[ns] = cache.Config{}
	}
	return cache.Options{DefaultNamespaces: namespaces}
}

// traceFlushTimeout bounds sending the last spans on exit: a collector that does not
// answer must not hold the replica's shutdown.
const traceFlushTimeout = 5 * time.Second

// flushTraces sends the spans still queued and stops the provider.
func flushTraces(tp *tracing.Provider, log logr.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), traceFlushTimeout)
	defer cancel()
	if err := tp.Shutdown(ctx); err != nil {
		log.Error(err, "Cannot flush the last spans", "timeout", traceFlushTimeout)
	}
}

// run builds the manager and runs it until ctx is done.
func run(ctx context.Context, cfg *rest.Config, o options, log logr.Logger) error {
	if err := os.MkdirAll(o.cacheDir, 0o750); err != nil {
		return fmt.Errorf("create cache directory %q: %w", o.cacheDir, err)
	}
	tp, err := tracing.FromEnv(ctx, log.WithName("tracing"))
	if err != nil {
		return fmt.Errorf("tracing from the OTEL_* environment: %w", err)
	}
	var traces trace.TracerProvider // nil: off
	if tp != nil {
		traces = tp
		defer flushTraces(tp, log)
		log.Info("Exporting traces over OTLP", "protocol", tp.Protocol)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  newScheme(),
		Logger:                  log,
		Metrics:                 metricsOptions(o),
		HealthProbeBindAddress:  o.probeAddr,
		PprofBindAddress:        o.pprofAddr,
		LeaderElection:          o.leaderElect,
		LeaderElectionID:        leaderElectionID,
		LeaderElectionNamespace: o.leaderElectionNamespace,
		// Step down as soon as the context ends, so a new leader takes over at once.
		LeaderElectionReleaseOnCancel: true,
		GracefulShutdownTimeout:       &o.gracefulShutdown,
		Cache:                         cacheOptions(o),
		Controller:                    config.Controller{SkipNameValidation: &o.skipNameValidation},
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	if err := wire(ctx, mgr, o, log, traces); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("add health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("informers", func(req *http.Request) error {
		if !mgr.GetCache().WaitForCacheSync(req.Context()) {
			return errors.New("informer caches are not synced")
		}
		return nil
	}); err != nil {
		return fmt.Errorf("add readiness check: %w", err)
	}
	log.Info("Starting manager", "leaderElect", o.leaderElect, "watchNamespaces", o.watchNamespaces, "cacheDir", o.cacheDir, "sourceAllow", o.sourceAllow, "sourceDeny", o.sourceDeny)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("run manager: %w", err)
	}
	return nil
}
