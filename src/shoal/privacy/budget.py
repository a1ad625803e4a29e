"""Privacy spent so far, as (epsilon, delta), from Opacus's RDP accountant.

Each round a peer releases one clipped, noised pseudo-gradient: a Gaussian mechanism
with sampling rate 1 over its data (peer-level privacy: it covers everything the peer
trained on that round). DP-SGD steps inside the inner loop are sampled Gaussian
mechanisms with rate batch/dataset; both kinds go into the same accountant, which
composes them. ``closed_form_epsilon`` is an independent check for the rate-1 case.
Opacus is imported when the first budget is made, not with this module.
"""

from __future__ import annotations

import math
import warnings
from typing import Any


class PrivacyBudget:
    def __init__(self, delta: float) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        from opacus.accountants import RDPAccountant  # ~2 s to import; only when DP is on

        self.delta = delta
        self._acc: Any = RDPAccountant()
        self.releases = 0

    def spend(self, noise_multiplier: float, sample_rate: float = 1.0, steps: int = 1) -> None:
        if not noise_multiplier > 0:
            raise ValueError("noise_multiplier must be > 0 to account for privacy")
        if not 0 < sample_rate <= 1 or steps < 1:
            raise ValueError("need 0 < sample_rate <= 1 and steps >= 1")
        for _ in range(steps):
            self._acc.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
        self.releases += steps

    def epsilon(self) -> float:
        if not self.releases:
            return 0.0
        with warnings.catch_warnings():  # "optimal order is the largest alpha" is advisory
            warnings.simplefilter("ignore")
            return float(self._acc.get_epsilon(self.delta))

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """(noise_multiplier, sample_rate, steps) as Opacus recorded them."""
        return list(self._acc.history)

    def load_history(self, history: list[tuple[float, float, int]], releases: int) -> None:
        """Restore a saved ``history`` (a resumed peer must not start again from 0)."""
        if releases != sum(n for _, _, n in history) or any(
            not (z > 0 and 0 < q <= 1 and n >= 1) for z, q, n in history
        ):
            raise ValueError("privacy history does not add up; refusing to restore it")
        self._acc.history = list(history)
        self.releases = releases


def closed_form_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """epsilon of ``releases`` rate-1 Gaussian mechanisms, computed here, not by Opacus:
    RDP(alpha) = releases * alpha / (2 sigma^2) (Mironov 2017), converted to (eps, delta)
    with the bound of Balle et al. 2020 (Thm 21), minimised over Opacus's default
    orders (1.1..10.9 by 0.1, 12..63)."""
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    best = math.inf
    for a in orders:
        rdp = releases * a / (2 * noise_multiplier**2)
        eps = rdp - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
        best = min(best, eps)
    return best
