"""Render a node's nftables ruleset: P2P open to all, metrics only from one CIDR,
every other inbound packet dropped.

The ruleset owns one table (``inet shoal_node``) and replaces it atomically, so
applying it twice is a no-op and other tables on the host are left alone.
"""

from __future__ import annotations

import ipaddress

TABLE = "shoal_node"
DEFAULT_METRICS_PORT = 9100


class FirewallError(ValueError):
    pass


def _port(name: str, value: int) -> int:
    if not 1 <= value <= 65535:
        raise FirewallError(f"{name} must be in 1..65535 (got {value})")
    return value


def render_ruleset(
    p2p_port: int, metrics_from: str, metrics_port: int = DEFAULT_METRICS_PORT
) -> str:
    _port("p2p port", p2p_port)
    _port("metrics port", metrics_port)
    if p2p_port == metrics_port:
        raise FirewallError("the P2P and metrics ports must differ")
    try:
        net = ipaddress.ip_network(metrics_from, strict=False)
    except ValueError as exc:
        raise FirewallError(f"--metrics-from must be a CIDR like 10.0.0.0/8: {exc}") from None
    family = "ip" if net.version == 4 else "ip6"
    return "\n".join([
        f"# shoal node firewall: P2P tcp/{p2p_port} from anywhere, metrics tcp/{metrics_port}",
        f"# from {net} only, everything else inbound dropped. Apply: nft -f FILE",
        f"table inet {TABLE} {{}}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "    chain input {",
        "        type filter hook input priority 0; policy drop;",
        '        iif "lo" accept',
        "        ct state established,related accept",
        "        ct state invalid drop",
        # Path MTU discovery and error reporting need these; echo is not allowed.
        "        icmp type { destination-unreachable, time-exceeded, parameter-problem } accept",
        "        icmpv6 type { destination-unreachable, packet-too-big, time-exceeded,"
        " parameter-problem, nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept",
        f"        tcp dport {p2p_port} accept",
        f"        {family} saddr {net} tcp dport {metrics_port} accept",
        "    }",
        "}",
        "",
    ])  # fmt: skip
