package controllers

// How the replicas' counts reach the leader: every replica publishes, for each split
// under rollout, one ConfigMap <split>-analysis-<replica> in the split's namespace,
// labelled packhost.io/component=analysis and controlled by the split (so it goes with
// it, and labelled with its UID), holding its last two closed analysis windows as JSON. It is rewritten only when
// a window closes: once per interval per split per replica, a few hundred bytes per
// revision. The leader reads them (uncached, selected by both labels, in the split's
// namespace only) once per interval.
//
// Anyone who may create ConfigMaps in the namespace can put the label on one, so the
// leader trusts one only when it is controlled by the split (its UID), is named for
// the replica it claims, and parses within countsMaxBytes; anything else is ignored. A
// tenant in another namespace cannot reach the split's namespace at all, and within the
// namespace whoever may write ConfigMaps may already edit the split itself.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/dispatcher"
	"github.com/packhost/packhost/state"
)

const (
	// componentAnalysis is the packhost.io/component label of a counts ConfigMap.
	componentAnalysis = "analysis"
	// LabelSplitUID labels a counts ConfigMap with its split's UID (a split's name may
	// be too long for a label), so that the leader lists one split's counts, not every
	// split's of the namespace: with many splits rolling out in one namespace that was
	// a list of all their counts per split per interval.
	LabelSplitUID = "packhost.io/split-uid"
	// countsKey is the data key holding a countsReport.
	countsKey = "counts.json"
	// countsMaxBytes bounds a counts report that is parsed: a split routes at most 16
	// revisions (32 during a rollout), two windows of about 250 bytes each.
	countsMaxBytes = 64 << 10
	// countsTick is how often the publisher looks for closed windows to publish.
	countsTick = 500 * time.Millisecond
	// maxRevisionsCounted is the most revisions a window may count: a split's stable
	// and target tables, 16 routes each.
	maxRevisionsCounted = 32
)

// countsName is the ConfigMap a replica publishes a split's counts in: named for both
// when that makes a valid name (a pod's name does), else for a hash of both.
func countsName(split, replica string) string {
	name := split + "-analysis-" + replica
	if len(validation.IsDNS1123Subdomain(name)) == 0 {
		return name
	}
	sum := sha256.Sum256([]byte(split + "/" + replica))
	return "analysis-" + hex.EncodeToString(sum[:12])
}

// trustedReports are the counts reports of split among cms: controlled by the split,
// named for their replica and well formed. The rest are named in ignored, with why.
func trustedReports(split *v1.TrafficSplit, cms []corev1.ConfigMap) (reports []countsReport, ignored []string) {
	for i := range cms {
		cm := &cms[i]
		rep, why := trustReport(split, cm)
		if why != "" {
			ignored = append(ignored, cm.Name+": "+why)
			continue
		}
		reports = append(reports, rep)
	}
	return reports, ignored
}

func trustReport(split *v1.TrafficSplit, cm *corev1.ConfigMap) (countsReport, string) {
	var rep countsReport
	ref := metav1.GetControllerOfNoCopy(cm)
	switch {
	case cm.Namespace != split.Namespace || cm.Labels[state.LabelComponent] != componentAnalysis:
		return rep, "not an analysis ConfigMap of the split's namespace"
	case ref == nil || ref.Kind != "TrafficSplit" || ref.APIVersion != v1.GroupVersion.String() || ref.Name != split.Name || ref.UID != split.UID:
		return rep, "not controlled by the split (no controller reference to its UID)"
	case len(cm.Data[countsKey]) > countsMaxBytes:
		return rep, fmt.Sprintf("%s is larger than %d bytes", countsKey, countsMaxBytes)
	}
	if err := json.Unmarshal([]byte(cm.Data[countsKey]), &rep); err != nil {
		return rep, fmt.Sprintf("%s does not parse: %v", countsKey, err)
	}
	if rep.Replica == "" || cm.Name != countsName(split.Name, rep.Replica) {
		return rep, fmt.Sprintf("not named for its replica %q", rep.Replica)
	}
	if why := implausible(rep); why != "" {
		return rep, why
	}
	return rep, ""
}

// countsMax bounds every count of a report: far above what one replica serves in an
// hour, far below what a sum of many could overflow.
const countsMax = 1 << 40

// implausible says what in a report a publisher cannot have written: more windows or
// revisions than it keeps, a window that ends before it starts, negative or overflowing
// counts, more errors than activities.
func implausible(rep countsReport) string {
	if len(rep.Windows) > dispatcher.KeptWindows {
		return fmt.Sprintf("%d windows, more than the %d a replica publishes", len(rep.Windows), dispatcher.KeptWindows)
	}
	for _, w := range rep.Windows {
		if !w.End.After(w.Start) {
			return "a window that does not end after it starts"
		}
		if len(w.Revisions) > maxRevisionsCounted {
			return fmt.Sprintf("%d revisions in a window, more than a split routes to", len(w.Revisions))
		}
		for rev, c := range w.Revisions {
			ok := c.Activities >= 0 && c.Activities <= countsMax && c.Errors >= 0 && c.Errors <= c.Activities
			for _, n := range c.Latency {
				ok = ok && n >= 0 && n <= countsMax
			}
			if !ok {
				return fmt.Sprintf("implausible counts for revision %q", rev)
			}
		}
	}
	return ""
}

// readReports lists the counts ConfigMaps of split's namespace through reader (the
// uncached API reader: caching them would watch every ConfigMap) and returns those it
// trusts.
func readReports(ctx context.Context, reader client.Reader, split *v1.TrafficSplit) ([]countsReport, error) {
	list := &corev1.ConfigMapList{}
	if err := reader.List(ctx, list, client.InNamespace(split.Namespace),
		client.MatchingLabels{state.LabelComponent: componentAnalysis, LabelSplitUID: string(split.UID)}); err != nil {
		return nil, fmt.Errorf("list analysis counts: %w", err)
	}
	reports, ignored := trustedReports(split, list.Items)
	if len(ignored) > 0 {
		// Labelled as counts but not trusted: only the debug log names them.
		logr.FromContextOrDiscard(ctx).V(1).Info("Ignored ConfigMaps that are not this split's counts", "ignored", ignored)
	}
	return reports, nil
}

// CountsPublisher publishes this replica's analysis counts of every split under rollout
// (see Track) to its counts ConfigMap, when a window closes; it runs on every replica.
type CountsPublisher struct {
	// Client writes the counts ConfigMaps (it never reads them).
	Client client.Client
	Router *dispatcher.Router
	// Replica names this replica (its pod's name); it names the ConfigMaps.
	Replica string
	Clock   func() time.Time
	Log     logr.Logger

	mu      sync.Mutex
	tracked map[types.NamespacedName]*trackedSplit
	// untracked are counts ConfigMaps to delete: their split's rollout ended.
	untracked []types.NamespacedName
}

// trackedSplit is a split whose counts this replica publishes.
type trackedSplit struct {
	uid    types.UID
	tenant string
	// revisions are the ones whose counts are published (the split's routes, its
	// stable and target tables): a caller choosing another revision makes no entry.
	revisions []string
	// published is the end of the newest window written.
	published time.Time
}

// Track publishes split's counts of revisions from now on.
func (p *CountsPublisher) Track(split *v1.TrafficSplit, revisions []string) {
	key := types.NamespacedName{Namespace: split.Namespace, Name: split.Name}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tracked == nil {
		p.tracked = map[types.NamespacedName]*trackedSplit{}
	}
	t := p.tracked[key]
	if t == nil || t.uid != split.UID || t.tenant != split.Spec.TenantRef.Name {
		t = &trackedSplit{uid: split.UID, tenant: split.Spec.TenantRef.Name}
		p.tracked[key] = t
	}
	t.revisions = revisions
}

// Untrack stops publishing a split's counts and deletes what this replica published.
func (p *CountsPublisher) Untrack(split types.NamespacedName) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.tracked[split]; ok {
		delete(p.tracked, split)
		p.untracked = append(p.untracked, types.NamespacedName{Namespace: split.Namespace, Name: countsName(split.Name, p.Replica)})
	}
}

// NeedLeaderElection is false: every replica publishes its own counts.
func (p *CountsPublisher) NeedLeaderElection() bool { return false }

// Start implements manager.Runnable.
func (p *CountsPublisher) Start(ctx context.Context) error {
	tick := time.NewTicker(countsTick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			p.publish(ctx)
		}
	}
}

// publish writes the counts of every tracked split that closed a window since the last
// write, and deletes the counts of splits no longer tracked. A write that fails is
// tried again on the next tick.
func (p *CountsPublisher) publish(ctx context.Context) {
	p.mu.Lock()
	gone := p.untracked
	p.untracked = nil
	type job struct {
		key types.NamespacedName
		t   trackedSplit
	}
	var jobs []job
	for key, t := range p.tracked {
		jobs = append(jobs, job{key, *t})
	}
	p.mu.Unlock()
	for _, key := range gone {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
		if err := p.Client.Delete(ctx, cm); err != nil && !apierrors.IsNotFound(err) {
			p.Log.Error(err, "Cannot delete analysis counts", "configMap", key.String())
		}
	}
	now := p.Clock()
	for _, j := range jobs {
		windows, _ := p.Router.ClosedWindows(j.key.Namespace, j.t.tenant, now)
		if len(windows) == 0 || !windows[len(windows)-1].End.After(j.t.published) {
			continue
		}
		if err := p.write(ctx, j.key, j.t, windows); err != nil {
			p.Log.Error(err, "Cannot publish analysis counts", "split", j.key.String())
			continue
		}
		p.mu.Lock()
		if t := p.tracked[j.key]; t != nil && t.uid == j.t.uid {
			t.published = windows[len(windows)-1].End
		}
		p.mu.Unlock()
	}
}

// write puts windows (of the tracked revisions only) in the split's counts ConfigMap of
// this replica: an update, or a create the first time. No read: the object is only
// ever written by this replica.
func (p *CountsPublisher) write(ctx context.Context, split types.NamespacedName, t trackedSplit, windows []dispatcher.Window) error {
	rep := countsReport{Replica: p.Replica}
	for _, w := range windows {
		kept := dispatcher.Window{Start: w.Start, End: w.End}
		for rev, c := range w.Revisions {
			if slices.Contains(t.revisions, rev) {
				if kept.Revisions == nil {
					kept.Revisions = map[string]dispatcher.Counts{}
				}
				kept.Revisions[rev] = c
			}
		}
		rep.Windows = append(rep.Windows, kept)
	}
	data, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: split.Namespace, Name: countsName(split.Name, p.Replica),
			Labels: map[string]string{state.LabelComponent: componentAnalysis, LabelSplitUID: string(t.uid)},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: v1.GroupVersion.String(), Kind: "TrafficSplit",
				Name: split.Name, UID: t.uid, Controller: ptr.To(true)}},
		},
		Data: map[string]string{countsKey: string(data)},
	}
	err = p.Client.Update(ctx, cm)
	if apierrors.IsNotFound(err) {
		cm.ResourceVersion = ""
		err = p.Client.Create(ctx, cm)
	}
	if err != nil {
		return fmt.Errorf("write analysis counts %s/%s: %w", cm.Namespace, cm.Name, err)
	}
	return nil
}
