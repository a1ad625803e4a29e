"""Differential privacy: clipped, noised pseudo-gradients with (epsilon, delta)
accounting by Opacus's RDP accountant, and optional per-sample DP-SGD inner steps.

Importing this package does not import Opacus (the accountant loads it on first use)."""

from shoal.privacy.budget import PrivacyBudget, closed_form_epsilon
from shoal.privacy.dp_pseudo_gradients import DpPseudoGradients
from shoal.privacy.gaussian_mechanism import clip_and_noise, clip_to_norm, gaussian_noise
from shoal.privacy.settings import DEFAULT_DELTA, DpSettings, DpSgdSettings

__all__ = [
    "DEFAULT_DELTA",
    "DpPseudoGradients",
    "DpSettings",
    "DpSgdSettings",
    "PrivacyBudget",
    "clip_and_noise",
    "clip_to_norm",
    "closed_form_epsilon",
    "gaussian_noise",
]
