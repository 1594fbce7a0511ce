// Command localenv runs a local Kubernetes control plane (kube-apiserver and etcd from
// hack/setup-envtest.sh) with the packhost CRDs installed, writes a kubeconfig for it and
// runs until interrupted. hack/run-local.sh starts the manager against it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/packhost/packhost/internal/testenv"
)

func main() {
	kubeconfig := flag.String("write-kubeconfig", "bin/local/kubeconfig", "Where to write the kubeconfig of the local control plane.")
	flag.Parse()
	if err := run(*kubeconfig); err != nil {
		fmt.Fprintln(os.Stderr, "localenv:", err)
		os.Exit(1)
	}
}

func run(kubeconfig string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	env, err := testenv.Start()
	if err != nil {
		return err
	}
	defer func() { _ = env.Stop() }()

	if err := os.MkdirAll(filepath.Dir(kubeconfig), 0o750); err != nil {
		return fmt.Errorf("create kubeconfig directory: %w", err)
	}
	written, err := env.KubeconfigFile(filepath.Dir(kubeconfig))
	if err != nil {
		return err
	}
	if written != kubeconfig {
		if err := os.Rename(written, kubeconfig); err != nil {
			return fmt.Errorf("place kubeconfig: %w", err)
		}
	}
	fmt.Printf("localenv: control plane at %s, CRDs installed, kubeconfig %s\n", env.Config.Host, kubeconfig)
	<-ctx.Done()
	fmt.Println("localenv: stopping the control plane")
	return nil
}
