"""A run's differential-privacy settings, checked once with clear errors.

``DpSettings`` turns on peer-level DP of the pseudo-gradient (``DiLoCo(dp=...)``,
``[privacy] clip_norm / noise_multiplier / delta``); ``DpSgdSettings`` turns on
per-sample DP-SGD inner steps through Opacus (``[privacy] dp_sgd_*``). This module
imports nothing heavy (Opacus is loaded only when a budget is first made), so the
training API can take these settings without paying for Opacus when DP is off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from shoal.privacy.dp_pseudo_gradients import DpPseudoGradients

DEFAULT_DELTA = 1e-5
# delta is the chance the (epsilon) guarantee fails outright; above this it means little
# (the usual advice is delta well below 1 / number of records).
MAX_DELTA = 1e-2


def _positive(name: str, value: object) -> float:
    """``value`` as a finite float > 0, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return v


def _delta(name: str, value: object) -> float:
    v = _positive(name, value)
    if v > MAX_DELTA:
        raise ValueError(
            f"{name} must be in (0, {MAX_DELTA}], got {value!r} (it is the probability "
            "that the guarantee fails; keep it well below 1 / the number of records)"
        )
    return v


@dataclass(frozen=True)
class DpSettings:
    """Clip each round's pseudo-gradient to L2 norm ``clip_norm`` and add
    N(0, (noise_multiplier * clip_norm)^2) to every coordinate, on the peer, before the
    update is compressed or sent; epsilon is reported for ``delta``."""

    clip_norm: float
    noise_multiplier: float
    delta: float = DEFAULT_DELTA

    def __post_init__(self) -> None:
        object.__setattr__(self, "clip_norm", _positive("clip_norm", self.clip_norm))
        object.__setattr__(
            self, "noise_multiplier", _positive("noise_multiplier", self.noise_multiplier)
        )
        object.__setattr__(self, "delta", _delta("delta", self.delta))

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.clip_norm

    def mechanism(self, generator: torch.Generator | None = None) -> DpPseudoGradients:
        """The per-peer mechanism (fresh OS-seeded noise unless ``generator`` is given)."""
        from shoal.privacy.dp_pseudo_gradients import DpPseudoGradients

        return DpPseudoGradients(
            self.clip_norm, self.noise_multiplier, self.delta, generator=generator
        )


@dataclass(frozen=True)
class DpSgdSettings:
    """Per-sample DP-SGD for the inner steps (Opacus): each sample's gradient clipped to
    ``max_grad_norm``, N(0, (noise_multiplier * max_grad_norm)^2) added per step,
    Poisson-sampled batches; epsilon (sample-level) reported for ``delta``."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float = DEFAULT_DELTA

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "noise_multiplier", _positive("dp_sgd_noise_multiplier", self.noise_multiplier)
        )
        object.__setattr__(
            self, "max_grad_norm", _positive("dp_sgd_max_grad_norm", self.max_grad_norm)
        )
        object.__setattr__(self, "delta", _delta("delta", self.delta))
