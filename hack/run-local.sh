#!/usr/bin/env bash
# run-local.sh runs packhost on this machine: a local control plane (kube-apiserver and
# etcd built by setup-envtest.sh), the packhost CRDs, the samples, and the manager. It
# keeps running until interrupted (Ctrl-C) and then stops everything it started.
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
  echo "run-local: stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$state"
}
trap cleanup EXIT INT TERM

make --no-print-directory packs >/dev/null
go build -o bin/localenv ./hack/localenv
bin/localenv --write-kubeconfig "$KUBECONFIG" --registry 127.0.0.1:5001 --packs bin/packs &
pids+=($!)
for _ in $(seq 1 300); do
  [ -s "$KUBECONFIG" ] && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "run-local: the control plane exited" >&2; exit 1; }
  sleep 0.2
done
[ -s "$KUBECONFIG" ] || { echo "run-local: the control plane did not start" >&2; exit 1; }

"$kubectl" apply --server-side -f config/samples/
echo "run-local: samples applied; starting the manager (Ctrl-C stops everything)"

bin/manager --metrics-bind-address=127.0.0.1:8080 --health-probe-bind-address=127.0.0.1:8081 \
  --dispatcher-bind-address=127.0.0.1:8090 --cache-dir "$state/cache" &
pids+=($!)
for _ in $(seq 1 100); do curl -fsS http://127.0.0.1:8081/readyz >/dev/null 2>&1 && break; sleep 0.2; done
"$kubectl" wait --for=condition=Ready --timeout=180s phrev --all
"$kubectl" wait --for=condition=Ready --timeout=60s phsplit/acme
"$kubectl" get packhost
go run ./hack/demo --dispatcher 127.0.0.1:8090

cat <<MSG

packhost is running against a local control plane.
  export KUBECONFIG=$KUBECONFIG
  $kubectl get packhost             # tenants, revisions and splits
  curl http://127.0.0.1:8081/readyz # manager readiness
  curl http://127.0.0.1:8080/metrics # Prometheus metrics (also on :8090/metrics)
  dispatcher: http://127.0.0.1:8090/v1/namespaces/default/tenants/acme/activities
Ctrl-C stops everything.
MSG
wait "${pids[@]}"
