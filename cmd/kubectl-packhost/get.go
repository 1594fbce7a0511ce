package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	packhostv1alpha1 "github.com/packhost/packhost/api/v1alpha1"
)

// get prints the split once.
func (o *options) get(ctx context.Context, name string) error {
	c, key, err := o.client(name)
	if err != nil {
		return err
	}
	split, err := getSplit(ctx, c, key)
	if err != nil {
		return err
	}
	return render(o.streams.Out, split, o.clock())
}

// refreshInterval is how often --watch redraws a terminal while nothing changes, so the
// ages it shows (how long the current step has run) stay current. Output that is not a
// terminal gets one rendering per change instead, so a log of it holds no repeats.
const refreshInterval = time.Second

// watch prints the split, then again at every change of it, until ctx ends or the split
// is deleted. A watch the API server ends (timeouts, a compaction) is started again from
// a fresh read, so no change is missed for long.
func (o *options) watch(ctx context.Context, name string) error {
	c, key, err := o.client(name)
	if err != nil {
		return err
	}
	terminal := isTerminal(o.streams.Out)
	var last []byte
	show := func(split *packhostv1alpha1.TrafficSplit) error {
		var b bytes.Buffer
		if err := render(&b, split, o.clock()); err != nil {
			return err
		}
		if terminal {
			// Home the cursor and clear the screen, as `watch` does.
			_, err := fmt.Fprintf(o.streams.Out, "\x1b[H\x1b[2J%s", b.Bytes())
			return err
		}
		if bytes.Equal(b.Bytes(), last) {
			return nil
		}
		if last != nil {
			fmt.Fprintln(o.streams.Out)
		}
		last = b.Bytes()
		_, err := o.streams.Out.Write(last)
		return err
	}
	var tick <-chan time.Time
	if terminal {
		t := time.NewTicker(refreshInterval)
		defer t.Stop()
		tick = t.C
	}
	for ctx.Err() == nil {
		split, err := getSplit(ctx, c, key)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if err := show(split); err != nil {
			return err
		}
		deleted, err := o.follow(ctx, c, key, split, show, tick)
		if err != nil || deleted {
			return err
		}
		select { // a watch that keeps ending at once must not spin
		case <-ctx.Done():
		case <-time.After(rewatchDelay):
		}
	}
	return nil
}

// rewatchDelay is the wait before reading and watching again after a watch ended.
const rewatchDelay = 500 * time.Millisecond

// follow watches the split from the version shown and shows each change until the watch
// ends (false) or the split is deleted (true).
func (o *options) follow(ctx context.Context, c client.WithWatch, key types.NamespacedName, split *packhostv1alpha1.TrafficSplit,
	show func(*packhostv1alpha1.TrafficSplit) error, tick <-chan time.Time) (bool, error) {
	w, err := c.Watch(ctx, &packhostv1alpha1.TrafficSplitList{}, client.InNamespace(key.Namespace),
		client.MatchingFields{"metadata.name": key.Name},
		&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: split.ResourceVersion, AllowWatchBookmarks: true}})
	if err != nil {
		if ctx.Err() != nil {
			return false, nil
		}
		return false, fmt.Errorf("watch trafficsplit %s: %w", key, err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return false, nil
		case <-tick:
			if err := show(split); err != nil {
				return false, err
			}
		case ev, ok := <-w.ResultChan():
			if !ok {
				return false, nil
			}
			switch ev.Type {
			case watch.Added, watch.Modified:
				if s, ok := ev.Object.(*packhostv1alpha1.TrafficSplit); ok {
					split = s
					if err := show(split); err != nil {
						return false, err
					}
				}
			case watch.Deleted:
				fmt.Fprintf(o.streams.Out, "trafficsplit %q was deleted\n", key.Name)
				return true, nil
			case watch.Error:
				// Usually 410 Gone: the version shown is too old to watch from. Read again.
				return false, nil
			}
		}
	}
}

// isTerminal says whether w is a terminal, where --watch redraws in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
