# local-lib.sh: shared by run-local.sh and loadtest.sh. Sourced, not run. It builds what
# is missing, starts a local control plane and OCI registry (bin/localenv) and the
# manager, and stops everything it started on exit.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

assets=$(hack/setup-envtest.sh)
export KUBEBUILDER_ASSETS=$assets
kubectl="$assets/kubectl"
state=$root/bin/local
mkdir -p "$state"
export KUBECONFIG=$state/kubeconfig
rm -f "$KUBECONFIG"

pids=()
cleanup() {
  trap - EXIT INT TERM
  echo "local: stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$state"
}
trap cleanup EXIT INT TERM

# start_local starts the control plane, the registry with the built packs, and the
# manager, and waits until the manager is ready.
start_local() {
  make --no-print-directory build packs >/dev/null
  go build -o bin/localenv ./hack/localenv
  bin/localenv --write-kubeconfig "$KUBECONFIG" --registry 127.0.0.1:5001 --packs bin/packs &
  pids+=($!)
  for _ in $(seq 1 300); do
    [ -s "$KUBECONFIG" ] && break
    kill -0 "${pids[0]}" 2>/dev/null || { echo "local: the control plane exited" >&2; exit 1; }
    sleep 0.2
  done
  [ -s "$KUBECONFIG" ] || { echo "local: the control plane did not start" >&2; exit 1; }
  bin/manager --metrics-bind-address=127.0.0.1:8080 --health-probe-bind-address=127.0.0.1:8081 \
    --dispatcher-bind-address=127.0.0.1:8090 --cache-dir "$state/cache" "$@" &
  manager_pid=$!
  pids+=($manager_pid)
  for _ in $(seq 1 150); do curl -fsS http://127.0.0.1:8081/readyz >/dev/null 2>&1 && break; sleep 0.2; done
}
