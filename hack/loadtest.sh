#!/usr/bin/env bash
# loadtest.sh measures the dispatcher against the HTTP floor of this machine: it starts
# packhost locally (as run-local.sh does), creates a tenant whose split routes to the
# echo pack and one routed to the counter pack (a state commit per activity), and runs
# cmd/loadgen at concurrency 1, 8 and 32 against each, with a bare net/http server
# answering the same bytes measured in the same run, with each server's CPU time per
# request.
#   DURATION=5s CONCURRENCY=1,8,32 hack/loadtest.sh
source "$(dirname "${BASH_SOURCE[0]}")/local-lib.sh"
DURATION=${DURATION:-5s}
CONCURRENCY=${CONCURRENCY:-1,8,32}

start_local --max-in-flight=4096 ${PPROF:+--pprof-bind-address=127.0.0.1:6060}
for app in echo counter; do
  "$kubectl" apply --server-side -f - <<YAML
apiVersion: v1
kind: Secret
metadata: {name: bench-$app-tokens}
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
  packs: [{name: $app, image: 127.0.0.1:5001/packs/$app:v1}]
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
go build -o bin/loadgen ./cmd/loadgen
base=http://127.0.0.1:8090/v1/namespaces/default/tenants
echo "== echo pack (1 KiB-class payload), dispatcher vs net/http floor"
bin/loadgen -url $base/bench-echo/activities -token bench-token -c "$CONCURRENCY" -d "$DURATION" -floor -label dispatcher -target-pid "$manager_pid" \
  -body "{\"kind\":\"message\",\"user_id\":\"{{user}}\",\"payload\":{\"text\":\"$(printf 'x%.0s' $(seq 1 900))\"}}"
if [ -n "${PPROF:-}" ]; then
  curl -s -o "$PPROF" "http://127.0.0.1:6060/debug/pprof/profile?seconds=3" & prof=$!
  bin/loadgen -url $base/bench-echo/activities -token bench-token -c 1 -d 4s -label profiled >/dev/null
  wait "$prof"
fi
echo "== counter pack (state commit per activity)"
bin/loadgen -url $base/bench-counter/activities -token bench-token -c "$CONCURRENCY" -d "$DURATION" -label counter -target-pid "$manager_pid" \
  -body '{"kind":"custom","action":"count-user","user_id":"{{user}}"}'
