# packhost Makefile: kubebuilder's targets, with every tool pinned and built into ./bin.

K8S_VERSION ?= 1.37.2
ETCD_VERSION ?= 3.6.16
CONTROLLER_TOOLS_VERSION ?= v0.23.0
# The manager image. `make image` pushes it here when IMG names a registry
# (registry.example.com/packhost/manager:v0.1.0), else writes an OCI layout to IMAGE_TAR;
# `make deploy` deploys it. config/default names this default.
IMG ?= packhost/manager:dev
IMAGE_TAR ?= bin/manager-image.tar
PLATFORMS ?= linux/amd64,linux/arm64
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
# Every file of the image has this time (the last commit's), so a rebuild of the same
# commit gives the same digest.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

LOCALBIN ?= $(CURDIR)/bin
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen
ENVTEST_DIR ?= $(LOCALBIN)/k8s/$(K8S_VERSION)
KUBECTL ?= $(ENVTEST_DIR)/kubectl

export K8S_VERSION ETCD_VERSION

# Tests that start a kube-apiserver find the binaries here.
export KUBEBUILDER_ASSETS ?= $(ENVTEST_DIR)

SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: controller-gen ## Generate CRDs and RBAC from the API types and markers.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./..." output:crd:artifacts:config=config/crd/bases

.PHONY: generate
generate: controller-gen ## Generate deepcopy code.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./..."

.PHONY: fmt
fmt: ## Run go fmt.
	go fmt ./...

.PHONY: vet
vet: ## Run go vet.
	go vet ./...

.PHONY: verify
verify: manifests generate fmt ## Regenerate everything and fail when the tree changed.
	@if [ -n "$$(git status --porcelain -- . ':!bin')" ]; then \
		echo "make verify: generated or formatted files are out of date:"; \
		git status --porcelain -- . ':!bin'; git --no-pager diff --stat; exit 1; \
	fi

.PHONY: envtest
envtest: ## Build kube-apiserver, etcd and kubectl into bin/k8s/<version> (first run: ~20 min).
	@hack/setup-envtest.sh >/dev/null

.PHONY: test
test: manifests generate fmt vet envtest ## Run every test against a real kube-apiserver and etcd.
	go test ./... -count=1

.PHONY: test-short
test-short: ## Run the tests that need no API server.
	go test ./... -short -count=1

##@ Build

.PHONY: build
build: manifests generate fmt vet ## Build the manager and the kubectl plugin (bin/kubectl-packhost: put it on the PATH for `kubectl packhost`).
	go build -o bin/manager ./cmd/manager
	go build -o bin/kubectl-packhost ./cmd/kubectl-packhost

# Benchmark-only packs (examples/packs/bench) are built by the benchmarks that use them.
PACKS := $(patsubst examples/packs/%/manifest.json,%,$(shell find examples/packs -name manifest.json -not -path '*/bench/*'))

.PHONY: packs
packs: ## Build the sample and test packs into bin/packs/ with packctl.
	go build -o bin/packctl ./cmd/packctl
	@mkdir -p bin/packs
	@for p in $(PACKS); do \
		out=bin/packs/$$(echo $$p | tr / -).wasm; \
		echo "pack $$p -> $$out"; \
		GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -ldflags="-s -w" -o $$out ./examples/packs/$$p && \
		bin/packctl pack -manifest examples/packs/$$p/manifest.json $$out || exit 1; \
	done

.PHONY: run-local
run-local: build envtest ## Run packhost locally: a local control plane, the CRDs, the samples and the manager.
	hack/run-local.sh

.PHONY: hostile
hostile: envtest ## Measure a victim tenant's service while another tenant attacks (hack/hostile.sh).
	hack/hostile.sh

.PHONY: loadtest
loadtest: envtest ## Measure the dispatcher against this machine's net/http floor (hack/loadtest.sh).
	hack/loadtest.sh

.PHONY: image
image: ## Build the manager image without Docker (hack/image; linux/amd64 and arm64): pushed to IMG if it names a registry, else bin/manager-image.tar.
	go run ./hack/image -image $(IMG) -o $(IMAGE_TAR) -platforms $(PLATFORMS) \
		-version '$(VERSION)' -revision '$(REVISION)' -created '$(SOURCE_DATE_EPOCH)'

.PHONY: docker-build
docker-build: ## Build the manager image with the Dockerfile (needs a Docker engine; untested here: make image is).
	docker build -t $(IMG) .

##@ Deployment

.PHONY: install
install: manifests ## Install the CRDs into the cluster of the current kubeconfig.
	$(KUBECTL) apply --server-side -k config/crd

.PHONY: uninstall
uninstall: manifests ## Remove the CRDs from the cluster of the current kubeconfig.
	$(KUBECTL) delete --ignore-not-found -k config/crd

.PHONY: deploy
deploy: manifests ## Deploy the manager, image IMG, to the cluster of the current kubeconfig.
	hack/kustomize-image.sh $(IMG) bin/deploy
	$(KUBECTL) apply --server-side -k bin/deploy

##@ Tools

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN) ## Build controller-gen into ./bin.
$(CONTROLLER_GEN):
	GOBIN=$(LOCALBIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
