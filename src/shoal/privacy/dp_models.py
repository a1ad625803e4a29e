"""The demo GPT made fit for DP-SGD: ``model.factory = "shoal.privacy.dp_models:tiny_gpt"``.

Opacus computes per-sample gradients layer by layer and needs every layer to see the
batch as its first dimension. The demo GPT looks its position embedding up with
``arange(t)`` (no batch dimension, broadcast afterwards), so Opacus cannot tell the
samples' gradients apart there. This subclass looks positions up per sample; same
parameters, names, initialisation and outputs, so its checkpoints and hashes are the
demo GPT's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shoal.training.model import GPT, GPTConfig


class DpReadyGPT(GPT):
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        b, t = idx.shape
        if t > self.cfg.block_size:
            raise ValueError(f"sequence of {t} > block_size {self.cfg.block_size}")
        pos = torch.arange(t, device=idx.device).expand(b, t)  # per sample, for Opacus
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def tiny_gpt(**kwargs: int) -> DpReadyGPT:
    return DpReadyGPT(GPTConfig(**kwargs))
