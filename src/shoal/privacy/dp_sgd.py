"""Optional per-sample DP-SGD for the inner loop, through Opacus.

Wraps the peer's model, optimizer and data loader with Opacus's PrivacyEngine (RDP
accountant, Poisson sampling): each inner step clips every sample's gradient to
``max_grad_norm`` and adds Gaussian noise. The engine's epsilon covers the inner steps
(sample-level privacy); pseudo-gradient noise (dp_pseudo_gradients.py) covers the
peer's release as a whole. Opacus needs per-sample gradient support for each layer
(Linear, Conv, Embedding, LayerNorm, ... ; not every custom module).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from opacus import PrivacyEngine


def make_private_inner(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader[Any],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    seed: int | None = None,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.utils.data.DataLoader[Any], PrivacyEngine]:
    if not noise_multiplier > 0 or not max_grad_norm > 0:
        raise ValueError("noise_multiplier and max_grad_norm must be > 0")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    with warnings.catch_warnings():  # secure_mode advice, not an error
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="rdp")
        dp_model, dp_opt, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            noise_generator=gen,
        )
    return dp_model, dp_opt, dp_loader, engine


def inner_epsilon(engine: PrivacyEngine, delta: float) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(engine.get_epsilon(delta))
