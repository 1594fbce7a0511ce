#!/usr/bin/env bash
# abtest.sh compares two packhost managers on one local control plane, for changes whose
# effect is smaller than this machine's drift between runs. Managers A (dispatcher on
# :8090) and B (:8091) serve the same echo tenant; cmd/loadgen drives them in turns, the
# order flipping every round, and the script prints every round and each side's means
# (requests/s, each server's and the load generator's CPU time per request), then each
# manager's resident memory.
#   A_ENV, B_ENV     environment assignments for a manager, e.g. B_ENV=GOGC=400
#   A_FLAGS, B_FLAGS extra manager flags
#   CONCURRENCY=8 ROUNDS=6 ROUND=3s
# Run it with A and B the same (no variables) first: that is how far apart two identical
# managers measure here.
source "$(dirname "${BASH_SOURCE[0]}")/local-lib.sh"
CONCURRENCY=${CONCURRENCY:-8}
ROUNDS=${ROUNDS:-6}
ROUND=${ROUND:-3s}

start_control_plane
start_manager 0 "${A_ENV:-}" --max-in-flight=4096 ${A_FLAGS:-}
start_manager 1 "${B_ENV:-}" --max-in-flight=4096 ${B_FLAGS:-}
bench_tenants echo
go build -o bin/loadgen ./cmd/loadgen

drive() { # drive LABEL N C DURATION: one run against manager N
  bin/loadgen -url "http://127.0.0.1:$((8090 + $2))/v1/namespaces/default/tenants/bench-echo/activities" \
    -token bench-token -c "$3" -d "$4" -label "$1" -target-pid "${manager_pids[$2]}" -body "$bench_body" | tail -1
}
drive warm-A 0 1 2s >/dev/null
drive warm-B 1 1 2s >/dev/null
echo "A: ${A_ENV:-} ${A_FLAGS:-}"
echo "B: ${B_ENV:-} ${B_FLAGS:-}"
for c in ${CONCURRENCY//,/ }; do
  for i in $(seq 1 "$ROUNDS"); do
    if [ $((i % 2)) = 1 ]; then drive A 0 "$c" "$ROUND"; drive B 1 "$c" "$ROUND"
    else drive B 1 "$c" "$ROUND"; drive A 0 "$c" "$ROUND"; fi
  done | sort -s -k1,1 | awk -v c="$c" '
    { print; n[$1]++; rps[$1] += $3; s[$1] += $8; cl[$1] += $9 }
    END { printf "c=%s  A %.0f req/s, server %.1fµs, client %.1fµs  |  B %.0f req/s, server %.1fµs, client %.1fµs  |  B/A %.2fx\n",
            c, rps["A"]/n["A"], s["A"]/n["A"], cl["A"]/n["A"], rps["B"]/n["B"], s["B"]/n["B"], cl["B"]/n["B"], rps["B"]/rps["A"] }'
done
for n in 0 1; do
  echo "manager $n resident memory: $(curl -s "http://127.0.0.1:$((8080 + 2 * n))/metrics" | awk '/^process_resident_memory_bytes/ {printf "%.0f MiB", $2 / 1048576}')"
done
