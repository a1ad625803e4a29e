"""Per-peer differential privacy for DiLoCo: clip and noise each pseudo-gradient before
it leaves the peer, and count what that costs.

    dp = DpPseudoGradients(clip_norm=1.0, noise_multiplier=1.1, delta=1e-5)
    delta_to_send = dp.privatize(pseudo_grad)    # once per round
    dp.epsilon_spent()                           # what the node reports

The noise goes in before averaging, so the other peers, the shard owners and the
ledger only ever see the noised update (local DP; no trusted aggregator needed). With
secure aggregation on top, only the sum is seen, whose noise is the sum of the peers'.

Where compression's error feedback sits: *after* this. The residual it carries to the
next round is (noised update + old residual) - what was sent, a function of released
values only, so it is post-processing and costs no privacy. Had the residual been
taken against the raw update, it would hold minus this round's noise and add it back
next round: the noise would cancel over rounds and the raw updates leak.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from shoal.privacy.budget import PrivacyBudget
from shoal.privacy.gaussian_mechanism import clip_and_noise


class DpPseudoGradients:
    def __init__(
        self,
        clip_norm: float,
        noise_multiplier: float,
        delta: float = 1e-5,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        if not clip_norm > 0 or not noise_multiplier > 0:
            raise ValueError("clip_norm and noise_multiplier must be > 0")
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.budget = PrivacyBudget(delta)
        self.last_norm: float | None = None  # the last update's norm before clipping
        # Noise must be unpredictable to others: by default a fresh OS-seeded generator
        # (never the run's seed, which every peer knows).
        if generator is None:
            generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
        self._gen = generator

    @property
    def delta(self) -> float:
        return self.budget.delta

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.clip_norm

    @property
    def releases(self) -> int:
        return self.budget.releases

    def privatize(self, update: torch.Tensor) -> torch.Tensor:
        out, self.last_norm = clip_and_noise(
            update, self.clip_norm, self.noise_multiplier, self._gen
        )
        self.budget.spend(self.noise_multiplier, sample_rate=1.0)
        return out

    def epsilon_spent(self) -> float:
        return self.budget.epsilon()

    def report(self) -> dict[str, Any]:
        """What a node publishes about its privacy (result JSON, logs)."""
        return {
            "epsilon": self.epsilon_spent(),
            "delta": self.delta,
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier,
            "releases": self.releases,
        }

    def state_dict(self) -> dict[str, Any]:
        """The accountant's history (so a resumed peer keeps counting); never the RNG."""
        return {"history": self.budget.history, "releases": self.releases}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.budget.load_history(
            [(float(z), float(q), int(n)) for z, q, n in state["history"]], int(state["releases"])
        )
