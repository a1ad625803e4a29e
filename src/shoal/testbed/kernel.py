"""What this kernel and machine support, probed in a throwaway namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from shoal.testbed.plan import PREFIX

PROBE_TIMEOUT_S = 10.0


@dataclass
class Feature:
    name: str
    ok: bool
    detail: str
    required: bool  # without it the testbed cannot work at all


def _run(*argv: str, stdin: str | None = None) -> tuple[bool, str]:
    try:
        p = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    lines = (p.stderr or p.stdout).strip().splitlines()
    errors = [ln for ln in lines if "rror" in ln]
    return p.returncode == 0, (errors or lines or ["ok"])[-1].strip()


def pick_iptables() -> str | None:
    """Legacy iptables keeps the NFQUEUE rule out of nft's ruleset, so a host firewall
    that flushes nft tables cannot remove the testbed's delay."""
    for name in ("iptables-legacy", "iptables-nft", "iptables"):
        if shutil.which(name):
            return name
    return None


def netfilterqueue_importable() -> bool:
    try:
        import netfilterqueue  # noqa: F401
    except ImportError:
        return False
    return True


def probe() -> list[Feature]:
    feats: list[Feature] = []
    root = os.geteuid() == 0
    feats.append(Feature("root", root, "uid 0" if root else "run as root (sudo)", True))
    for tool, pkg in (("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables"),
                      ("ethtool", "ethtool")):  # fmt: skip
        found = shutil.which(tool)
        feats.append(Feature(tool, bool(found), found or f"install Debian {pkg}", True))
    if not root or not all(f.ok for f in feats):
        return feats
    ns = f"{PREFIX}probe-{os.getpid()}"
    ok, why = _run("ip", "netns", "add", ns)
    feats.append(Feature("netns", ok, why, True))
    if not ok:
        return feats
    try:
        feats += _probe_in(ns)
    finally:
        _run("ip", "netns", "del", ns)
    return feats


def _probe_in(ns: str) -> list[Feature]:
    feats: list[Feature] = []

    def ns_run(*argv: str, stdin: str | None = None) -> tuple[bool, str]:
        return _run("ip", "netns", "exec", ns, *argv, stdin=stdin)

    ok, why = _run("ip", "-n", ns, "link", "add", "pv0", "type", "veth", "peer", "name", "pv1")
    feats.append(Feature("veth", ok, why, True))
    ok, why = _run("ip", "-n", ns, "link", "add", "pbr", "type", "bridge")
    feats.append(Feature("bridge", ok, why, True))
    ok, why = ns_run("tc", "qdisc", "add", "dev", "pv0", "root", "tbf", "rate", "100mbit",
                     "burst", "12500", "limit", "100000")  # fmt: skip
    feats.append(Feature("tc tbf", ok, why, True))
    ns_run("tc", "qdisc", "del", "dev", "pv0", "root")
    ok, why = ns_run("tc", "qdisc", "add", "dev", "pv0", "root", "netem", "delay", "1ms")
    feats.append(Feature("tc netem", ok, why, False))
    ok, why = ns_run("ethtool", "-K", "pv0", "tso", "off", "gso", "off")
    feats.append(Feature("ethtool offloads off", ok, why, True))
    ruleset = (
        "table inet probe {\n chain input {\n type filter hook input priority -50;"
        " policy accept;\n numgen random mod 10000 < 100 drop\n ip saddr 10.0.0.1 drop\n }\n}\n"
    )
    ok, why = ns_run("nft", "-f", "-", stdin=ruleset)
    feats.append(Feature("nft numgen + drop", ok, why, True))
    ok, why = ns_run("nft", "-f", "-", stdin="table inet q {\n chain i {\n type filter hook "
                     "input priority 0;\n queue num 0\n }\n}\n")  # fmt: skip
    feats.append(Feature("nft queue", ok, why, False))
    ipt = pick_iptables()
    if ipt is None:
        feats.append(Feature("iptables NFQUEUE", False, "install Debian iptables", False))
    else:
        ok, why = ns_run(ipt, "-w", "-A", "INPUT", "-j", "NFQUEUE", "--queue-num", "0")
        feats.append(Feature("iptables NFQUEUE", ok, f"{ipt}: {why}", False))
    nfq = netfilterqueue_importable()
    feats.append(Feature("NetfilterQueue package", nfq,
                         "ok" if nfq else "pip install 'shoal[testbed]'", False))  # fmt: skip
    return feats


def delay_method(feats: list[Feature]) -> str | None:
    """``netem`` where the kernel has it, else the NFQUEUE holder, else None."""
    have = {f.name: f.ok for f in feats}
    if have.get("tc netem"):
        return "netem"
    if have.get("iptables NFQUEUE") and have.get("NetfilterQueue package"):
        return "nfqueue"
    return None


def missing_required(feats: list[Feature]) -> list[Feature]:
    return [f for f in feats if f.required and not f.ok]
