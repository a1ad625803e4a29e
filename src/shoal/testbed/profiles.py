"""Link profiles: what one host's link to the switch looks like."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinkProfile:
    name: str
    rate_mbit: float  # each direction, per host (upload and download)
    rtt_ms: float  # round trip between two hosts: each receiver holds rtt/2
    loss_pct: float  # dropped on each host's input, per packet

    def __post_init__(self) -> None:
        if not self.rate_mbit > 0:
            raise ValueError("rate_mbit must be > 0")
        if not 0 <= self.rtt_ms <= MAX_RTT_MS:
            raise ValueError(f"rtt_ms must be in [0, {MAX_RTT_MS}]")
        if not 0 <= self.loss_pct <= 100:
            raise ValueError("loss_pct must be in [0, 100]")


# Beyond a few seconds the delayer's queue (packets held at once) would overflow.
MAX_RTT_MS = 2000.0

PROFILES: dict[str, LinkProfile] = {
    "wan": LinkProfile("wan", rate_mbit=100.0, rtt_ms=50.0, loss_pct=1.0),
    "lan": LinkProfile("lan", rate_mbit=1000.0, rtt_ms=0.0, loss_pct=0.0),
    "lossy": LinkProfile("lossy", rate_mbit=20.0, rtt_ms=100.0, loss_pct=5.0),
}


def get_profile(name: str) -> LinkProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None
