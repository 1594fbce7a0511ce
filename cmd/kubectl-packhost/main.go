// Command kubectl-packhost is the kubectl plugin for packhost rollouts: installed on the
// PATH it runs as `kubectl packhost`.
//
//	kubectl packhost get split NAME [-n NS] [--watch]
//	kubectl packhost promote NAME [-n NS]
//	kubectl packhost abort NAME [-n NS]
//	kubectl packhost retry NAME [-n NS]
//
// get shows a TrafficSplit's canary rollout as a person reads it: the steps and the
// current one, the live analysis figures per revision, and the table the dispatcher routes
// by next to the stable and the target tables. promote, abort and retry each set one
// annotation on the split (packhost.io/promote, /abort, /retry) to a new value, the time
// of the call; the controller acts on a changed value. So every action is also doable
// with plain kubectl (`kubectl annotate phsplit NAME packhost.io/promote="$(date)"
// --overwrite`) and from Git, and the plugin holds no state and no privileges of its own:
// it needs get, watch and patch on trafficsplits.
//
// It takes kubectl's connection flags (--kubeconfig, --context, -n, --server, ...).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o := &options{
		flags:   genericclioptions.NewConfigFlags(true),
		streams: genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr},
	}
	if err := newRootCommand(o).ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		stop()
		os.Exit(1)
	}
}

// newRootCommand is `kubectl packhost` with its subcommands; o.flags become its
// connection flags.
func newRootCommand(o *options) *cobra.Command {
	root := &cobra.Command{
		Use:   "kubectl-packhost",
		Short: "Follow and steer packhost canary rollouts",
		Long: `Follow and steer the canary rollouts of packhost TrafficSplits.

A TrafficSplit with spec.strategy.canary walks its steps when spec.routes names a new
revision, judged by the dispatcher's own counts. This plugin shows where a rollout is
and sets the annotations the controller acts on: promote skips the current pause, abort
goes back to the stable routes, retry starts an aborted rollout again.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		CompletionOptions: cobra.CompletionOptions{
			DisableDefaultCmd: true,
		},
		Annotations: map[string]string{
			// Shown as "kubectl packhost" in help, as kubectl plugins are.
			cobra.CommandDisplayNameAnnotation: "kubectl packhost",
		},
	}
	root.SetOut(o.streams.Out)
	root.SetErr(o.streams.ErrOut)
	o.flags.AddFlags(root.PersistentFlags())
	root.AddCommand(o.getCommand())
	for _, a := range actions {
		root.AddCommand(o.actionCommand(a))
	}
	return root
}

func (o *options) getCommand() *cobra.Command {
	var watch bool
	cmd := &cobra.Command{
		Use:   "get split NAME",
		Short: "Show a TrafficSplit's rollout: steps, analysis per revision, tables",
		Example: `  kubectl packhost get split acme
  kubectl packhost get split acme -n shop --watch`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 2 || !isSplitResource(args[0]) {
				return fmt.Errorf("usage: kubectl packhost get split NAME (the only resource shown is split, also phsplit or trafficsplit)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if watch {
				return o.watch(cmd.Context(), args[1])
			}
			return o.get(cmd.Context(), args[1])
		},
	}
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "after showing the split, show it again each time it changes, until interrupted")
	return cmd
}

// isSplitResource says whether name is one of the names kubectl knows TrafficSplits by.
func isSplitResource(name string) bool {
	switch name {
	case "split", "splits", "phsplit", "phsplits", "trafficsplit", "trafficsplits", "trafficsplits.packhost.io":
		return true
	}
	return false
}

func (o *options) actionCommand(a action) *cobra.Command {
	return &cobra.Command{
		Use:     a.verb + " NAME",
		Short:   a.short,
		Long:    a.short + ".\n\n" + a.long,
		Example: fmt.Sprintf("  kubectl packhost %s acme -n shop", a.verb),
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.act(cmd.Context(), a, args[0])
		},
	}
}
