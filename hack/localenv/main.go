// Command localenv runs a local Kubernetes control plane (kube-apiserver and etcd from
// hack/setup-envtest.sh) with the packhost CRDs installed, and an OCI registry, writes a
// kubeconfig for the control plane and runs until interrupted. hack/local-lib.sh pushes
// the built packs to the registry with `packctl push`, as a user publishes a pack, and
// starts the manager against the control plane.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/internal/testenv"
)

func main() {
	kubeconfig := flag.String("write-kubeconfig", "bin/local/kubeconfig", "Where to write the kubeconfig of the local control plane.")
	registryAddr := flag.String("registry", "127.0.0.1:5001", "Address of the local OCI registry; empty runs none.")
	packs := flag.String("packs", "", "Directory of built packs (*.wasm) to push to the registry as packs/<name>:v1; empty pushes none (push them with packctl push).")
	flag.Parse()
	if err := run(*kubeconfig, *registryAddr, *packs); err != nil {
		fmt.Fprintln(os.Stderr, "localenv:", err)
		os.Exit(1)
	}
}

func run(kubeconfig, registryAddr, packs string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if registryAddr != "" {
		if err := serveRegistry(registryAddr, packs); err != nil {
			return err
		}
	}
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

// serveRegistry starts an in-process OCI registry and pushes every pack in dir (if not
// empty) to it as a pack artifact.
func serveRegistry(addr, dir string) error {
	if dir == "" {
		if err := packs.ServeRegistry(addr, nil); err != nil {
			return err
		}
		fmt.Printf("localenv: OCI registry at %s\n", addr)
		return nil
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.wasm"))
	if len(files) == 0 {
		return errors.New("no packs in " + dir + ": run make packs")
	}
	all := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		all[strings.TrimSuffix(filepath.Base(f), ".wasm")] = b
	}
	if err := packs.ServeRegistry(addr, all); err != nil {
		return err
	}
	fmt.Printf("localenv: OCI registry at %s holds %d packs as packs/<name>:v1\n", addr, len(files))
	return nil
}
