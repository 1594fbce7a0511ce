// Package diskcache bounds the manager's cache directory: fetched packs and wazero's
// compiled code. Both are written once per pack digest and never needed again once no
// revision uses the digest, so without a bound a replica that lives through many
// rollouts fills its volume (an emptyDir with a size limit, past which the kubelet
// evicts the pod).
package diskcache

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/go-logr/logr"
)

// Prune removes the least recently written files under dir, except those keep names,
// until the files left total at most limit bytes. It returns how many files it removed
// and how many bytes they held. Removing a file another process still reads is safe on
// Linux, and everything in the cache can be made again: a pack is fetched again, and
// its code compiled again, the next time a revision needs it.
func Prune(dir string, limit int64, keep func(path string) bool) (removed int, freed int64, err error) {
	type file struct {
		path string
		size int64
		mod  time.Time
	}
	var files []file
	var total int64
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed meanwhile
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		total += info.Size()
		if keep == nil || !keep(path) {
			files = append(files, file{path, info.Size(), info.ModTime()})
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	slices.SortFunc(files, func(a, b file) int { return a.mod.Compare(b.mod) })
	for _, f := range files {
		if total <= limit {
			break
		}
		if err := os.Remove(f.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, freed, err
		}
		total -= f.size
		removed++
		freed += f.size
	}
	return removed, freed, nil
}

// Pruner prunes a cache directory to its limit when it starts and then every Interval.
// It is a manager Runnable that runs on every replica.
type Pruner struct {
	Dir string
	// Limit is the most bytes the directory's files may hold; 0 turns pruning off.
	Limit int64
	// Interval between prunes (default 5 minutes).
	Interval time.Duration
	// Keep, when set, names files that must stay however old: the packs of loaded
	// revisions, which a restart would otherwise have to fetch again.
	Keep func(path string) bool
	Log  logr.Logger
}

// Start prunes until ctx is done.
func (p *Pruner) Start(ctx context.Context) error {
	if p.Limit <= 0 {
		return nil
	}
	interval := p.Interval
	if interval <= 0 {
		interval = 5 * time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		removed, freed, err := Prune(p.Dir, p.Limit, p.Keep)
		switch {
		case err != nil:
			p.Log.Error(err, "Cannot prune the cache directory", "dir", p.Dir)
		case removed > 0:
			p.Log.Info("Pruned the cache directory", "dir", p.Dir, "files", removed, "bytes", freed, "limit", p.Limit)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// NeedLeaderElection is false: every replica has its own cache.
func (p *Pruner) NeedLeaderElection() bool { return false }
