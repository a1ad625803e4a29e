"""The simulated network: latency, loss, partitions and crashed hosts.

All randomness comes from the RNG the simulator hands in, so a seed fixes every
delivery time and every lost packet.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class NetworkModel:
    base_latency_s: float = 0.010
    jitter_s: float = 0.005
    loss: float = 0.0
    crashed: set[int] = field(default_factory=set)
    # host -> partition group; hosts in different groups cannot talk. Empty = no partition.
    partition_of: dict[int, int] = field(default_factory=dict)

    def delay(self, rng: random.Random, src: int, dst: int) -> float | None:
        """Seconds until a message from src reaches dst, or None if it is lost."""
        if dst in self.crashed or src in self.crashed:
            return None
        if self.partition_of and self.partition_of.get(src, 0) != self.partition_of.get(dst, 0):
            return None
        # Draw both numbers unconditionally so a change in loss rate does not shift
        # every later draw (keeps runs with and without loss comparable).
        lost = rng.random() < self.loss
        jitter = rng.random() * self.jitter_s
        if lost:
            return None
        return self.base_latency_s + jitter

    def partition(self, groups: list[list[int]]) -> None:
        self.partition_of = {h: g for g, hosts in enumerate(groups) for h in hosts}

    def heal(self) -> None:
        self.partition_of = {}
