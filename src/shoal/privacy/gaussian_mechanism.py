"""Clip a whole update to an L2 norm, then add isotropic Gaussian noise.

With sensitivity ``clip_norm`` (any one peer's update, whatever its data, is at most
that long) and noise std ``noise_multiplier * clip_norm``, each release is the
Gaussian mechanism, whose privacy loss the RDP accountant adds up (budget.py).
"""

from __future__ import annotations

import math

import torch

# The norm is summed in fp32 (fp64 costs a full copy: ~0.2 s per 16M values here) and
# the scale applied in fp32; both round by well under this, so a clipped update's true
# norm stays <= clip_norm, which is what the sensitivity (and so epsilon) assumes.
CLIP_MARGIN = 1e-5


def update_norm(update: torch.Tensor) -> float:
    """L2 norm of ``update``; ValueError if it holds NaN/Inf."""
    norm = float(torch.linalg.vector_norm(update.float()))
    if not math.isfinite(norm):  # fp32 squares overflow past ~1.8e19: recheck in fp64
        norm = float(torch.linalg.vector_norm(update.double()))
    if not math.isfinite(norm):
        raise ValueError("update holds NaN/Inf")
    return norm


def _clip_scale(norm: float, clip_norm: float) -> float:
    if not clip_norm > 0 or not math.isfinite(clip_norm):
        raise ValueError(f"clip_norm must be finite and > 0, got {clip_norm}")
    return 1.0 if norm <= clip_norm * (1 - CLIP_MARGIN) else clip_norm * (1 - CLIP_MARGIN) / norm


def clip_to_norm(update: torch.Tensor, clip_norm: float) -> tuple[torch.Tensor, float]:
    """``update`` scaled down to norm <= ``clip_norm`` if longer; also its original norm."""
    if not clip_norm > 0 or not math.isfinite(clip_norm):
        raise ValueError(f"clip_norm must be finite and > 0, got {clip_norm}")
    norm = update_norm(update)
    scale = _clip_scale(norm, clip_norm)
    return (update.clone() if scale == 1.0 else update * scale), norm


def clip_and_noise(
    update: torch.Tensor, clip_norm: float, noise_multiplier: float, generator: torch.Generator
) -> tuple[torch.Tensor, float]:
    """Clipped ``update`` plus N(0, (noise_multiplier * clip_norm)^2) per coordinate, as
    fp32, and the update's norm before clipping (worth logging: a clip far below it
    throws most of the update away). One fresh buffer: the noise, added to in place."""
    if not noise_multiplier >= 0 or not math.isfinite(noise_multiplier):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier}")
    _clip_scale(0.0, clip_norm)  # checks clip_norm before any work
    norm = update_norm(update)
    scale = _clip_scale(norm, clip_norm)
    std = noise_multiplier * clip_norm
    # fp32 noise: an fp64 draw would double the peak memory and take ~4x as long, and
    # the update leaves the peer as fp32 (or int8) anyway.
    noise = torch.randn(update.shape, generator=generator, dtype=torch.float32)
    return noise.mul_(std).add_(update.to(torch.float32), alpha=scale), norm


def gaussian_noise(
    update: torch.Tensor, clip_norm: float, noise_multiplier: float, generator: torch.Generator
) -> torch.Tensor:
    """Clipped ``update`` plus N(0, (noise_multiplier * clip_norm)^2) per coordinate."""
    return clip_and_noise(update, clip_norm, noise_multiplier, generator)[0]
