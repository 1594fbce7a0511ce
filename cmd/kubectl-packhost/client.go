package main

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/controller-runtime/pkg/client"

	packhostv1alpha1 "github.com/packhost/packhost/api/v1alpha1"
)

// options is what every subcommand shares: where to connect and where to print.
type options struct {
	flags   *genericclioptions.ConfigFlags
	streams genericiooptions.IOStreams
	// now is the clock: the time shown ages are measured from and actions write.
	now func() time.Time
}

func (o *options) clock() time.Time {
	if o.now != nil {
		return o.now()
	}
	return time.Now()
}

// scheme knows the one kind the plugin reads.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := packhostv1alpha1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}()

// client connects as kubectl would with the same flags and returns the split's key in
// the namespace those flags (or the kubeconfig's context) name.
func (o *options) client(name string) (client.WithWatch, types.NamespacedName, error) {
	ns, _, err := o.flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, types.NamespacedName{}, fmt.Errorf("find the namespace: %w", err)
	}
	cfg, err := o.flags.ToRESTConfig()
	if err != nil {
		return nil, types.NamespacedName{}, fmt.Errorf("read the kubeconfig: %w", err)
	}
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, types.NamespacedName{}, fmt.Errorf("connect to the API server: %w", err)
	}
	return c, types.NamespacedName{Namespace: ns, Name: name}, nil
}

// getSplit reads the split, saying which one is missing when it is.
func getSplit(ctx context.Context, c client.Client, key types.NamespacedName) (*packhostv1alpha1.TrafficSplit, error) {
	split := &packhostv1alpha1.TrafficSplit{}
	if err := c.Get(ctx, key, split); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("trafficsplit %q not found in namespace %q", key.Name, key.Namespace)
		}
		return nil, fmt.Errorf("get trafficsplit %s: %w", key, err)
	}
	return split, nil
}
