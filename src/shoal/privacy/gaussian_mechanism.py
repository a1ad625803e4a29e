"""Clip a whole update to an L2 norm, then add isotropic Gaussian noise.

With sensitivity ``clip_norm`` (any one peer's update, whatever its data, is at most
that long) and noise std ``noise_multiplier * clip_norm``, each release is the
Gaussian mechanism, whose privacy loss the RDP accountant adds up (budget.py).
"""

from __future__ import annotations

import math

import torch


def clip_to_norm(update: torch.Tensor, clip_norm: float) -> tuple[torch.Tensor, float]:
    """``update`` scaled down to norm ``clip_norm`` if longer; also its original norm."""
    if not clip_norm > 0 or not math.isfinite(clip_norm):
        raise ValueError(f"clip_norm must be finite and > 0, got {clip_norm}")
    norm = float(torch.linalg.vector_norm(update.double()))
    if not math.isfinite(norm):
        raise ValueError("update holds NaN/Inf")
    if norm <= clip_norm:
        return update.clone(), norm
    return (update.double() * (clip_norm / norm)).to(update.dtype), norm


def clip_and_noise(
    update: torch.Tensor, clip_norm: float, noise_multiplier: float, generator: torch.Generator
) -> tuple[torch.Tensor, float]:
    """Clipped ``update`` plus N(0, (noise_multiplier * clip_norm)^2) per coordinate, as
    fp32, and the update's norm before clipping (worth logging: a clip far below it
    throws most of the update away)."""
    if not noise_multiplier >= 0 or not math.isfinite(noise_multiplier):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier}")
    clipped, norm = clip_to_norm(update, clip_norm)
    std = noise_multiplier * clip_norm
    # fp32 noise: an fp64 draw would double the peak memory for a large model, and the
    # update leaves the peer as fp32 (or int8) anyway.
    noise = torch.randn(update.shape, generator=generator, dtype=torch.float32)
    return noise.mul_(std).add_(clipped.to(torch.float32)), norm


def gaussian_noise(
    update: torch.Tensor, clip_norm: float, noise_multiplier: float, generator: torch.Generator
) -> torch.Tensor:
    """Clipped ``update`` plus N(0, (noise_multiplier * clip_norm)^2) per coordinate."""
    return clip_and_noise(update, clip_norm, noise_multiplier, generator)[0]
