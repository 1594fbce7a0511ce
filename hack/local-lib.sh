# local-lib.sh: shared by run-local.sh, loadtest.sh and abtest.sh. Sourced, not run. It builds what
# is missing, starts a local control plane and OCI registry (bin/localenv), publishes the
# packs to it (packctl push) and starts the manager, and stops everything it started on exit.
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

# start_control_plane starts the control plane and the registry, and publishes the
# built packs to the registry as packs/<name>:v1 with packctl push.
start_control_plane() {
  make --no-print-directory build packs >/dev/null
  go build -o bin/localenv ./hack/localenv
  bin/localenv --write-kubeconfig "$KUBECONFIG" --registry 127.0.0.1:5001 &
  pids+=($!)
  for _ in $(seq 1 300); do
    [ -s "$KUBECONFIG" ] && break
    kill -0 "${pids[0]}" 2>/dev/null || { echo "local: the control plane exited" >&2; exit 1; }
    sleep 0.2
  done
  [ -s "$KUBECONFIG" ] || { echo "local: the control plane did not start" >&2; exit 1; }
  push_packs
}

# push_packs publishes every pack in bin/packs (make packs) to the local registry as
# packs/<name>:v1, the way a pack author does, and prints the digests to pin.
push_packs() {
  local f name
  for f in bin/packs/*.wasm; do
    name=$(basename "$f" .wasm)
    bin/packctl push "$f" "127.0.0.1:5001/packs/$name:v1" | sed -n "s|^image: *|local: pushed packs/$name:v1 = |p"
  done
}

# start_manager N ENV [FLAGS...] starts manager N (0, 1, ...) with the environment
# assignments in ENV (space separated, may be empty) and FLAGS: its metrics on port
# 8080+2N, probes on 8081+2N, dispatcher on 8090+N. It waits until the manager is
# ready and sets manager_pids[N]. MANAGER names another manager binary. The local
# registry is on 127.0.0.1, which the pack sources' egress policy refuses unless allowed.
manager_pids=()
start_manager() {
  local n=$1 vars=$2
  shift 2
  # shellcheck disable=SC2086 # vars is a list of assignments
  env $vars "${MANAGER:-bin/manager}" --metrics-bind-address=127.0.0.1:$((8080 + 2 * n)) --metrics-secure=false --health-probe-bind-address=127.0.0.1:$((8081 + 2 * n)) \
    --dispatcher-bind-address=127.0.0.1:$((8090 + n)) --cache-dir "$state/cache-$n" --source-allow=127.0.0.1/32 "$@" &
  manager_pids[n]=$!
  pids+=($!)
  for _ in $(seq 1 150); do curl -fsS "http://127.0.0.1:$((8081 + 2 * n))/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
}

# start_local starts the control plane, the registry and one manager with FLAGS, and
# sets manager_pid.
start_local() {
  start_control_plane
  start_manager 0 "" "$@"
  manager_pid=${manager_pids[0]}
}

# bench_tenants APP[:SHARDS]... creates, for each pack APP, tenant bench-APP (token
# bench-token) whose split routes every activity to revision bench-APP-v1 of that pack,
# and waits until they are Ready. With SHARDS the tenant is bench-APP-SHARDS and its
# revision's state has that many shards.
bench_tenants() {
  local spec pack app shards
  for spec in "$@"; do
    pack=${spec%%:*} app=${spec%%:*} shards=1
    if [ "$spec" != "$pack" ]; then
      shards=${spec#*:} app=$pack-$shards
    fi
    "$kubectl" apply --server-side -f - <<YAML
apiVersion: v1
kind: Secret
metadata: {name: bench-$app-tokens, annotations: {packhost.io/tenants: bench-$app}}
stringData: {bench: bench-token}
---
apiVersion: packhost.io/v1alpha1
kind: Tenant
metadata: {name: bench-$app}
spec:
  auth: {secretRef: {name: bench-$app-tokens}}
  limits: {maxConcurrentActivities: 64}
---
apiVersion: packhost.io/v1alpha1
kind: Revision
metadata: {name: bench-$app-v1}
spec:
  tenantRef: {name: bench-$app}
  packs: [{name: $pack, image: 127.0.0.1:5001/packs/$pack:v1}]
  state: {shards: $shards}
---
apiVersion: packhost.io/v1alpha1
kind: TrafficSplit
metadata: {name: bench-$app}
spec:
  tenantRef: {name: bench-$app}
  routes: [{revisionName: bench-$app-v1, percent: 100}]
YAML
  done
  "$kubectl" wait --for=condition=Ready --timeout=180s phrev --all
  "$kubectl" wait --for=condition=Ready --timeout=60s phsplit --all
}

# bench_body is the echo pack's load: a message with a 900-byte text, for user {{user}}.
bench_body="{\"kind\":\"message\",\"user_id\":\"{{user}}\",\"payload\":{\"text\":\"$(printf 'x%.0s' $(seq 1 900))\"}}"
