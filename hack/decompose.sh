#!/usr/bin/env bash
# decompose.sh splits the dispatcher's cost over the HTTP floor into its parts. It builds
# a second manager from HEAD with hack/decompose.patch applied (switches read from the
# environment, never part of the product) and runs four managers on one control plane,
# each measured by cmd/loadgen against its own floor in the same run, REPEATS times:
#   m0 dispatcher   the manager as committed
#   m1 unguarded    the same, with packs compiled as built: no wasmguard rewrite
#   m2 no-guest     the dispatcher's whole path except the guest call (auth, body, parse,
#                   route, metrics, response) answering what the echo pack would
#   m3 floor-here   the floor's own handler inside the manager's process and HTTP server
#   DURATION=10s CONCURRENCY=1,8 REPEATS=2 hack/decompose.sh
source "$(dirname "${BASH_SOURCE[0]}")/local-lib.sh"
DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-1,8}
REPEATS=${REPEATS:-2}

tree=$(mktemp -d)
git worktree add --quiet --detach "$tree" HEAD
# --3way carries the patch over changes near its lines, from the blobs it names.
if ! git -C "$tree" apply --3way --quiet "$root/hack/decompose.patch"; then
  git worktree remove --force "$tree"
  echo "decompose: hack/decompose.patch no longer applies to HEAD; apply it by hand, then save 'git diff' over it" >&2
  exit 1
fi
built=0
(cd "$tree" && go build -o "$root/bin/manager-decompose" ./cmd/manager) && built=1
git worktree remove --force "$tree"
[ "$built" = 1 ] || { echo "decompose: the patched manager does not build" >&2; exit 1; }

start_control_plane
start_manager 0 "" --max-in-flight=4096
bench_tenants echo
go build -o bin/loadgen ./cmd/loadgen
url() { echo "http://127.0.0.1:$((8090 + $1))/v1/namespaces/default/tenants/bench-echo/activities"; }
floor=$state/floor-answer
curl -fsS -H "Authorization: Bearer bench-token" -d "${bench_body//\{\{user\}\}/u0}" "$(url 0)" >"$floor"
MANAGER=bin/manager-decompose start_manager 1 "PACKHOST_DECOMPOSE=unguarded" --max-in-flight=4096
MANAGER=bin/manager-decompose start_manager 2 "PACKHOST_DECOMPOSE=no-guest" --max-in-flight=4096
MANAGER=bin/manager-decompose start_manager 3 "PACKHOST_DECOMPOSE_FLOOR=$floor" --max-in-flight=4096
names=(dispatcher unguarded no-guest floor-here)
for n in 1 2; do # a new manager serves once it has seen the split
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null -H "Authorization: Bearer bench-token" -d "${bench_body//\{\{user\}\}/u0}" "$(url $n)" && break
    sleep 0.1
  done
done
for rep in $(seq 1 "$REPEATS"); do
  for n in 0 1 2 3; do
    echo "== run $rep: m$n ${names[$n]}"
    bin/loadgen -url "$(url $n)" -token bench-token -c "$CONCURRENCY" -d "$DURATION" -floor -label "m$n" \
      -target-pid "${manager_pids[$n]}" -body "$bench_body" | grep -v '^target'
  done
done
