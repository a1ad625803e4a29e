#!/usr/bin/env bash
# Debian packages for the namespace testbed (shoal testnet) and for building the
# NetfilterQueue wheel. Installed only when missing, as root, without prompts.
set -euo pipefail
PKGS=(iproute2 nftables iptables ethtool iputils-ping iperf3 libnetfilter-queue-dev gcc python3-dev)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "testbed: missing Debian packages ${missing[*]} (install them as root);" \
         "the testbed tests will skip and the NetfilterQueue build may fail" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
