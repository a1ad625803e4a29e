"""A testnet topology as plain data, and the commands and rulesets that build it.

Nothing here runs anything: ``applier.py`` executes what these functions return, so
the layout can be checked without root.

Layout for ``--hosts 3 --name tn``::

    netns shoal-tn-sw:  bridge br0 <- ports h0, h1, h2 (veth ends)
    netns shoal-tn-h0:  eth0 10.231.0.1/24  (peer of shoal-tn-sw:h0)
    netns shoal-tn-h1:  eth0 10.231.0.2/24 ...

The switch lives in its own namespace, so the host's root namespace (its links,
bridges, br_netfilter and firewall) is never touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shoal.testbed.profiles import LinkProfile

PREFIX = "shoal-"
SUBNET = "10.231.0"  # a /24 that exists only inside the testnet's namespaces
HOST_IFACE = "eth0"
BRIDGE = "br0"
NFT_TABLE = "shoal_testnet"
NFQUEUE_NUM = 0
# A /24 with .1.. for hosts; more hosts than this would also be painful on one machine.
MAX_HOSTS = 200
# Interface and namespace names must stay short (IFNAMSIZ is 16 with the NUL).
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
HOST_RE = re.compile(r"^h(0|[1-9][0-9]{0,2})$")

Cmd = tuple[str, ...]


class PlanError(ValueError):
    pass


@dataclass(frozen=True)
class HostPlan:
    name: str  # "h0"
    netns: str  # "shoal-tn-h0"
    addr: str  # "10.231.0.1"
    switch_port: str  # the veth end in the switch namespace ("h0")


@dataclass(frozen=True)
class TestnetPlan:
    name: str
    profile: LinkProfile
    hosts: tuple[HostPlan, ...]

    @property
    def switch_netns(self) -> str:
        return f"{PREFIX}{self.name}-sw"

    @property
    def netns_prefix(self) -> str:
        return f"{PREFIX}{self.name}-"

    def host(self, name: str) -> HostPlan:
        for h in self.hosts:
            if h.name == name:
                return h
        known = ", ".join(h.name for h in self.hosts)
        raise PlanError(f"no host {name!r} in testnet {self.name!r} (hosts: {known})")


def make_plan(name: str, hosts: int, profile: LinkProfile) -> TestnetPlan:
    if not NAME_RE.match(name):
        raise PlanError(f"testnet name must match {NAME_RE.pattern} (got {name!r})")
    if not 1 <= hosts <= MAX_HOSTS:
        raise PlanError(f"--hosts must be in [1, {MAX_HOSTS}]")
    return TestnetPlan(
        name,
        profile,
        tuple(
            HostPlan(f"h{i}", f"{PREFIX}{name}-h{i}", f"{SUBNET}.{i + 1}", f"h{i}")
            for i in range(hosts)
        ),
    )


def _in(netns: str, *argv: str) -> Cmd:
    return ("ip", "netns", "exec", netns, *argv)


def switch_commands(plan: TestnetPlan) -> list[Cmd]:
    sw = plan.switch_netns
    return [
        ("ip", "netns", "add", sw),
        ("ip", "-n", sw, "link", "set", "lo", "up"),
        ("ip", "-n", sw, "link", "add", BRIDGE, "type", "bridge"),
        ("ip", "-n", sw, "link", "set", BRIDGE, "up"),
    ]


def offload_off(netns: str, iface: str) -> Cmd:
    # Segmentation offloads hand nft one 64 KiB "packet"; loss must hit real packets.
    return _in(netns, "ethtool", "-K", iface, "tso", "off", "gso", "off", "gro", "off")


def tbf_burst_bytes(rate_mbit: float) -> int:
    # ~1 ms at line rate, and never below two full frames (tbf refuses bursts < MTU).
    return max(3028, int(rate_mbit * 1e6 / 8 / 1000))


def tbf_limit_bytes(rate_mbit: float) -> int:
    # Queue up to ~100 ms at line rate: enough for one TCP flow's window on a 50 ms RTT
    # path without tail drops, small enough that a 10x slower host does not bufferbloat.
    return max(30_000, int(rate_mbit * 1e6 / 8 * 0.1))


def tbf_args(rate_mbit: float) -> tuple[str, ...]:
    return (
        "tbf",
        "rate", f"{rate_mbit:g}mbit",
        "burst", str(tbf_burst_bytes(rate_mbit)),
        "limit", str(tbf_limit_bytes(rate_mbit)),
    )  # fmt: skip


def shape_commands(plan: TestnetPlan, host: HostPlan, rate_mbit: float, netem: bool) -> list[Cmd]:
    """Bandwidth both ways (host upload on eth0, download on the switch port), and with
    netem the one-way delay rtt/2 on the switch port toward the receiver."""
    sw = plan.switch_netns
    up = ("tc", "qdisc", "replace", "dev", HOST_IFACE, "root", *tbf_args(rate_mbit))
    cmds = [_in(host.netns, *up)]
    half = plan.profile.rtt_ms / 2
    if netem and half > 0:
        cmds += [
            _in(sw, "tc", "qdisc", "del", "dev", host.switch_port, "root"),
            _in(sw, "tc", "qdisc", "add", "dev", host.switch_port, "root", "handle", "1:",
                "netem", "delay", f"{half:g}ms", "limit", "100000"),
            _in(sw, "tc", "qdisc", "add", "dev", host.switch_port, "parent", "1:1",
                "handle", "10:", *tbf_args(rate_mbit)),
        ]  # fmt: skip
    else:
        down = ("tc", "qdisc", "replace", "dev", host.switch_port, "root", *tbf_args(rate_mbit))
        cmds.append(_in(sw, *down))
    return cmds


def host_commands(plan: TestnetPlan, host: HostPlan) -> list[Cmd]:
    sw = plan.switch_netns
    ns = host.netns
    return [
        ("ip", "netns", "add", ns),
        ("ip", "-n", ns, "link", "set", "lo", "up"),
        ("ip", "link", "add", HOST_IFACE, "netns", ns, "type", "veth",
         "peer", "name", host.switch_port, "netns", sw),
        ("ip", "-n", sw, "link", "set", host.switch_port, "master", BRIDGE),
        ("ip", "-n", ns, "addr", "add", f"{host.addr}/24", "dev", HOST_IFACE),
        ("ip", "-n", ns, "link", "set", HOST_IFACE, "up"),
        ("ip", "-n", sw, "link", "set", host.switch_port, "up"),
        offload_off(ns, HOST_IFACE),
        offload_off(sw, host.switch_port),
    ]  # fmt: skip


def nfqueue_rule(iptables: str, action: str = "-A") -> tuple[str, ...]:
    """The receiver's INPUT hook hands every IPv4 packet from the link to the delayer.
    (Delay on OUTPUT would stall the sender's own TCP stack; on INPUT it is the wire.)"""
    return (iptables, "-w", action, "INPUT", "-i", HOST_IFACE,
            "-j", "NFQUEUE", "--queue-num", str(NFQUEUE_NUM))  # fmt: skip


def loss_per_10k(loss_pct: float) -> int:
    return round(loss_pct * 100)


def host_ruleset(loss_pct: float, blocked: list[str]) -> str:
    """This host's own nft table: loss on input (per packet, offloads are off) and the
    partition: no packet to or from a blocked address. Replaced atomically as a whole."""
    elements = f"elements = {{ {', '.join(blocked)} }}" if blocked else ""
    loss = loss_per_10k(loss_pct)
    loss_rule = (
        f'        iifname "{HOST_IFACE}" numgen random mod 10000 < {loss} drop\n' if loss else ""
    )
    return (
        f"table inet {NFT_TABLE} {{}}\n"
        f"delete table inet {NFT_TABLE}\n"
        f"table inet {NFT_TABLE} {{\n"
        f"    set blocked {{ type ipv4_addr; {elements} }}\n"
        f"    chain input {{\n"
        f"        type filter hook input priority -50; policy accept;\n"
        f"        ip saddr @blocked drop\n"
        f"{loss_rule}"
        f"    }}\n"
        f"    chain output {{\n"
        f"        type filter hook output priority -50; policy accept;\n"
        f"        ip daddr @blocked drop\n"
        f"    }}\n"
        f"}}\n"
    )


def parse_partition(spec: str, plan: TestnetPlan) -> list[list[str]]:
    """``"h0,h1/h2,h3"`` -> groups. Links between hosts of different groups are cut;
    hosts named in no group keep all their links."""
    groups = [[h.strip() for h in g.split(",") if h.strip()] for g in spec.split("/")]
    if len(groups) < 2 or any(not g for g in groups):
        raise PlanError(
            f"partition needs at least two non-empty groups like h0,h1/h2 (got {spec!r})"
        )
    seen: set[str] = set()
    for g in groups:
        for h in g:
            plan.host(h)
            if h in seen:
                raise PlanError(f"host {h} is in more than one group")
            seen.add(h)
    return groups


def blocked_for(plan: TestnetPlan, groups: list[list[str]]) -> dict[str, list[str]]:
    """Per host name, the addresses it must not exchange packets with."""
    group_of = {h: i for i, g in enumerate(groups) for h in g}
    out: dict[str, list[str]] = {}
    for h in plan.hosts:
        mine = group_of.get(h.name)
        out[h.name] = [
            o.addr for o in plan.hosts if mine is not None and group_of.get(o.name, mine) != mine
        ]
    return out
