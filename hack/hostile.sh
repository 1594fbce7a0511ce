#!/usr/bin/env bash
# hostile.sh measures what an attacking tenant does to a victim tenant on one replica:
# for each attack it drives the victim (the echo pack) with cmd/loadgen while the attacker
# runs the attack from two clients (cmd/loadgen, keep-alive connections), and prints the victim's answers, errors and p50/p99,
# with no attack before and after in the same run. Goal: victim success 100%, victim p99
# at most 2x its unattacked p99 (or +2 ms, whichever is larger).
#   DURATION=10s hack/hostile.sh
source "$(dirname "${BASH_SOURCE[0]}")/local-lib.sh"
DURATION=${DURATION:-10s}
start_local --max-in-flight=256 --memory-budget=1Gi
bench_tenants echo
"$kubectl" apply --server-side -f - <<YAML
apiVersion: v1
kind: Secret
metadata: {name: attacker-tokens, annotations: {packhost.io/tenants: attacker}}
stringData: {atk: attacker-token}
---
apiVersion: packhost.io/v1alpha1
kind: Tenant
metadata: {name: attacker}
spec:
  auth: {secretRef: {name: attacker-tokens}, routingCallers: [atk]}
  policy: {state: {read: true, write: true}, wasi: {clocks: true}}
  limits: {activityTimeout: 2s, maxConcurrentActivities: 4, memoryPages: 16384}
---
apiVersion: packhost.io/v1alpha1
kind: TrafficSplit
metadata: {name: attacker}
spec:
  tenantRef: {name: attacker}
  routes: [{revisionName: att-loop, percent: 100}]
YAML
for a in loop sleep flood grow; do
  "$kubectl" apply --server-side -f - <<YAML
apiVersion: packhost.io/v1alpha1
kind: Revision
metadata: {name: att-$a}
spec:
  tenantRef: {name: attacker}
  packs: [{name: $a, image: 127.0.0.1:5001/packs/hostile-$a:v1}]
YAML
done
"$kubectl" wait --for=condition=Ready --timeout=180s phrev --all
go build -o bin/loadgen ./cmd/loadgen
base=http://127.0.0.1:8090/v1/namespaces/default/tenants

# attack NAME starts the attacker: a load generator with two clients, in the background.
attackers=()
attack() {
  local what=$1
  case $what in
    unauthenticated)
      bin/loadgen -url "$base/made-up/activities" -token guess -c 2 -d 1h -body '{"kind":"message"}' >/dev/null 2>&1 &
      ;;
    *)
      bin/loadgen -url "$base/attacker/activities" -token attacker-token -header "Packhost-Revision: att-$what" -c 2 -d 1h -body '{"kind":"message"}' >/dev/null 2>&1 &
      ;;
  esac
  attackers+=($!)
}
calm() {
  [ ${#attackers[@]} -gt 0 ] || return 0 # a bare wait would wait for the control plane
  for pid in "${attackers[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait "${attackers[@]}" 2>/dev/null || true
  attackers=()
}

echo "== the victim's echo activities at concurrency 8, under each attack from two attacker clients"
skip=0 # the first run prints the column names
for what in none loop sleep flood grow unauthenticated none; do
  [ "$what" = none ] || attack "$what"
  sleep 1
  bin/loadgen -url "$base/bench-echo/activities" -token bench-token -c 8 -d "$DURATION" -label "victim/$what" -body "$bench_body" | if [ "$skip" = 1 ]; then sed 1d; else cat; fi
  skip=1
  calm
done
