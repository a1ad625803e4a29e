#!/usr/bin/env bash
# Debian packages tests/deploy/test_docker_swarm.py needs (docker.io, debootstrap).
# Without root or apt the install is left out and that test skips, saying why.
set -uo pipefail
need=()
[ -x /usr/sbin/dockerd ] || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "deploy deps: not root or no apt-get; the Docker image test will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${need[@]}"; } >/dev/null; then
    echo "deploy deps: apt-get install ${need[*]} failed; the Docker image test will skip" >&2
fi
exit 0
