#!/usr/bin/env bash
# kustomize-image.sh IMG DIR writes DIR/kustomization.yaml: config/default with the
# manager image set to IMG (name[:tag][@digest]) by a kustomize image entry. make deploy
# applies it, so that IMG need not be written into config/default.
set -euo pipefail
img=${1:?usage: kustomize-image.sh IMG DIR} dir=${2:?usage: kustomize-image.sh IMG DIR}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

name=$img tag="" digest=""
if [[ $name == *@* ]]; then digest=${name#*@} name=${name%%@*}; fi
last=${name##*/}
if [[ $last == *:* ]]; then tag=${last#*:} name=${name%:*}; fi
# Docker reads a reference with neither tag nor digest as :latest.
if [ -z "$tag$digest" ]; then tag=latest; fi

mkdir -p "$dir"
base=$(realpath --relative-to "$dir" "$root/config/default")
{
  echo "# Written by hack/kustomize-image.sh for IMG=$img; not checked in."
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources:"
  echo "- $base"
  echo "images:"
  # config/default has already named the image packhost/manager.
  echo "- name: packhost/manager"
  echo "  newName: $name"
  if [ -n "$tag" ]; then echo "  newTag: \"$tag\""; fi
  if [ -n "$digest" ]; then echo "  digest: $digest"; fi
} >"$dir/kustomization.yaml"
