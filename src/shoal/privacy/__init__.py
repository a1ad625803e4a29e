"""Differential privacy: clipped, noised pseudo-gradients with (epsilon, delta)
accounting by Opacus's RDP accountant, and optional per-sample DP-SGD inner steps."""

from shoal.privacy.budget import PrivacyBudget, closed_form_epsilon
from shoal.privacy.dp_pseudo_gradients import DpPseudoGradients
from shoal.privacy.gaussian_mechanism import clip_to_norm, gaussian_noise

__all__ = [
    "DpPseudoGradients",
    "PrivacyBudget",
    "clip_to_norm",
    "closed_form_epsilon",
    "gaussian_noise",
]
