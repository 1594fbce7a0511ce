#!/usr/bin/env bash
# loadtest.sh measures the dispatcher against the HTTP floor of this machine: it starts
# packhost locally (as run-local.sh does), creates a tenant whose split routes to the
# echo pack and two routed to the counter pack (a state commit per activity; its state
# in one ConfigMap shard, and in eight), and runs
# cmd/loadgen at concurrency 1, 8 and 32 against each, with a bare net/http server
# answering the same bytes measured in the same run, with each server's CPU time per
# request.
#   DURATION=5s CONCURRENCY=1,8,32 hack/loadtest.sh
source "$(dirname "${BASH_SOURCE[0]}")/local-lib.sh"
DURATION=${DURATION:-5s}
CONCURRENCY=${CONCURRENCY:-1,8,32}

start_local --max-in-flight=4096 ${PPROF:+--pprof-bind-address=127.0.0.1:6060}
bench_tenants echo counter counter:8
go build -o bin/loadgen ./cmd/loadgen
base=http://127.0.0.1:8090/v1/namespaces/default/tenants
echo "== echo pack (1 KiB-class payload), dispatcher vs net/http floor"
bin/loadgen -url $base/bench-echo/activities -token bench-token -c "$CONCURRENCY" -d "$DURATION" -floor -label dispatcher -target-pid "$manager_pid" \
  -body "$bench_body"
if [ -n "${PPROF:-}" ]; then
  curl -s -o "$PPROF" "http://127.0.0.1:6060/debug/pprof/profile?seconds=3" & prof=$!
  bin/loadgen -url $base/bench-echo/activities -token bench-token -c 1 -d 4s -label profiled >/dev/null
  wait "$prof"
fi
echo "== counter pack (state commit per activity), its state in one shard and in eight; backend: the API server"
apiserver_pid=$(pgrep -P "${pids[0]}" kube-apiserver || echo 0)
for tenant in bench-counter bench-counter-8; do
  # First every one of the load generator's 1,000 users gets a counter, so each run
  # measures a namespace of the same size.
  bin/loadgen -url $base/$tenant/activities -token bench-token -c 32 -d 4s \
    -body '{"kind":"custom","action":"count-user","user_id":"{{user}}"}' >/dev/null
  bin/loadgen -url $base/$tenant/activities -token bench-token -c "$CONCURRENCY" -d "$DURATION" -label "${tenant#bench-}" -target-pid "$manager_pid" \
    -backend-pid "$apiserver_pid" \
    -body '{"kind":"custom","action":"count-user","user_id":"{{user}}"}'
done
