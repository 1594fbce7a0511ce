#!/usr/bin/env bash
# setup-envtest.sh builds the control-plane binaries envtest needs (kube-apiserver, etcd,
# kubectl) from the Go module proxy and caches them under bin/k8s/<version>/.
#
# setup-envtest's downloads are not reachable from every build machine, so packhost builds
# the binaries itself. The first run takes a while (on 2 busy cores: kube-apiserver about
# 14 minutes, kubectl about 2, etcd about 1); later runs find the cache and return in
# seconds. The last line printed is the directory to export as KUBEBUILDER_ASSETS.
#
# Environment:
#   K8S_VERSION   Kubernetes release to build (default 1.37.2)
#   ETCD_VERSION  etcd release to build (default 3.6.16)
#   ENVTEST_BIN   cache root (default <repo>/bin/k8s)
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.37.2}
ETCD_VERSION=${ETCD_VERSION:-3.6.16}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${ENVTEST_BIN:-$root/bin/k8s}/$K8S_VERSION
staging_version=v0.${K8S_VERSION#*.}      # 1.37.2 -> v0.37.2
major=${K8S_VERSION%%.*}
minor=${K8S_VERSION#*.}; minor=${minor%%.*}

log() { printf 'setup-envtest: %s\n' "$*" >&2; }

# have NAME succeeds when NAME is cached and reports the version it was built for.
have() {
  [ -x "$dest/$1" ] && [ -f "$dest/.$1.version" ] && [ "$(cat "$dest/.$1.version")" = "$2" ]
}

mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod CGO_ENABLED=0

ldflags="-s -w \
  -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION \
  -X k8s.io/component-base/version.gitMajor=$major \
  -X k8s.io/component-base/version.gitMinor=$minor \
  -X k8s.io/component-base/version.gitTreeState=clean \
  -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z \
  -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION \
  -X k8s.io/client-go/pkg/version.gitMajor=$major \
  -X k8s.io/client-go/pkg/version.gitMinor=$minor"

# k8s_module prepares a throwaway module that builds k8s.io/kubernetes commands. The
# kubernetes module replaces its staging modules (k8s.io/api, ...) with local paths; a
# consumer has to replace each with the published staging release instead.
k8s_module() {
  local dir=$work/k8s
  [ -f "$dir/go.mod" ] && return
  mkdir -p "$dir"
  (
    cd "$dir"
    go mod init packhost.invalid/envtest-k8s >/dev/null 2>&1
    go mod edit -require "k8s.io/kubernetes@v$K8S_VERSION"
    gomod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
    [ -f "$gomod" ] || { log "cannot read go.mod of k8s.io/kubernetes@v$K8S_VERSION"; exit 1; }
    # Lines of the form "k8s.io/x => ./staging/src/k8s.io/x", inside or outside a block.
    sed -n 's#^[[:space:]]*\(replace[[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]\{1,\}\)[[:space:]]\{1,\}=>[[:space:]]\{1,\}\./staging/.*#\2#p' "$gomod" |
      while read -r mod; do
        go mod edit -replace "$mod=$mod@$staging_version"
      done
  )
}

build_k8s() { # name cmd
  if have "$1" "$K8S_VERSION"; then log "$1 v$K8S_VERSION cached"; return; fi
  k8s_module
  log "building $1 v$K8S_VERSION (first build takes minutes)"
  local start=$SECONDS
  (cd "$work/k8s" && go build -trimpath -ldflags "$ldflags" -o "$dest/$1" "k8s.io/kubernetes/cmd/$2")
  echo "$K8S_VERSION" >"$dest/.$1.version"
  log "built $1 in $((SECONDS - start))s"
}

build_etcd() {
  if have etcd "$ETCD_VERSION"; then log "etcd v$ETCD_VERSION cached"; return; fi
  local dir=$work/etcd start=$SECONDS
  mkdir -p "$dir"
  log "building etcd v$ETCD_VERSION"
  (
    cd "$dir"
    go mod init packhost.invalid/envtest-etcd >/dev/null 2>&1
    go mod edit -require "go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
    go build -trimpath -ldflags "-s -w" -o "$dest/etcd" go.etcd.io/etcd/server/v3
  )
  echo "$ETCD_VERSION" >"$dest/.etcd.version"
  log "built etcd in $((SECONDS - start))s"
}

build_etcd
build_k8s kube-apiserver kube-apiserver
build_k8s kubectl kubectl
echo "$dest"
