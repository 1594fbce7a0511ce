#!/usr/bin/env bash
# run-local.sh runs packhost on this machine: a local control plane (kube-apiserver and
# etcd built by setup-envtest.sh), an OCI registry holding the sample packs, the CRDs,
# the samples and the manager; it sends some traffic and prints what happened. It keeps
# running until interrupted (Ctrl-C) and then stops everything it started.
source "$(dirname "${BASH_SOURCE[0]}")/local-lib.sh"

start_local
"$kubectl" apply --server-side -f config/samples/
"$kubectl" wait --for=condition=Ready --timeout=180s phrev --all
"$kubectl" wait --for=condition=Ready --timeout=60s phsplit/acme
"$kubectl" get packhost
go run ./hack/demo --dispatcher 127.0.0.1:8090

cat <<MSG

packhost is running against a local control plane.
  export KUBECONFIG=$KUBECONFIG
  $kubectl get packhost             # tenants, revisions and splits
  curl http://127.0.0.1:8081/readyz # manager readiness
  curl http://127.0.0.1:8080/metrics # Prometheus metrics (served plain only here: --metrics-secure=false)
  dispatcher: http://127.0.0.1:8090/v1/namespaces/default/tenants/acme/activities
Ctrl-C stops everything.
MSG
wait "${pids[@]}"
