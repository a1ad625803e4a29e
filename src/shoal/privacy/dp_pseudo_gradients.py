"""Per-peer differential privacy for DiLoCo: clip and noise each pseudo-gradient before
it leaves the peer, and count what that costs.

    dp = DpPseudoGradients(clip_norm=1.0, noise_multiplier=1.1, delta=1e-5, seed=...)
    delta_to_send = dp.privatize(pseudo_grad)    # once per round
    dp.epsilon_spent()                           # what the node reports

The noise goes in before averaging, so the other peers, the shard owners and the
ledger only ever see the noised update (local DP; no trusted aggregator needed). With
secure aggregation on top, only the sum is seen, whose noise is the sum of the peers'.
"""

from __future__ import annotations

import os

import torch

from shoal.privacy.budget import PrivacyBudget
from shoal.privacy.gaussian_mechanism import gaussian_noise


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
        # Noise must be unpredictable to others: by default a fresh OS-seeded generator.
        if generator is None:
            generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
        self._gen = generator

    def privatize(self, update: torch.Tensor) -> torch.Tensor:
        out = gaussian_noise(update, self.clip_norm, self.noise_multiplier, self._gen)
        self.budget.spend(self.noise_multiplier, sample_rate=1.0)
        return out

    def epsilon_spent(self) -> float:
        return self.budget.epsilon()
