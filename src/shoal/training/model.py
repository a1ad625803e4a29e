"""A tiny byte-level GPT for the demo, nanoGPT-style.

Token + position embeddings, `n_layer` pre-norm blocks of causal self-attention and
an MLP, a final layer norm, and a head tied to the token embedding. The default
(~0.4M params, context 64) learns Python syntax on 2 CPU cores in a few minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shoal.training.data import VOCAB_SIZE, Corpus


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = VOCAB_SIZE
    block_size: int = 64
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 96
    dropout: float = 0.0  # DiLoCo's replicas must stay comparable; no dropout by default

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} not divisible by n_head {self.n_head}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        # (b, t, c) -> (b, heads, t, head_dim)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        out: torch.Tensor = self.proj(y.transpose(1, 2).reshape(b, t, c))
        return out


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        out: torch.Tensor = x + self.mlp(self.ln2(x))
        return out


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.wte.weight  # tied: fewer params, better for tiny models
        self._init_weights(seed)

    @torch.no_grad()
    def _init_weights(self, seed: int) -> None:
        # Own generator: the same seed gives the same model on every peer, and the
        # caller's global RNG is left alone.
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 1:  # layer-norm gains
                nn.init.ones_(p)
            else:
                # GPT-2: residual projections scaled down by depth so the stream stays O(1).
                std = 0.02
                if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                    std /= math.sqrt(2 * self.cfg.n_layer)
                nn.init.normal_(p, 0.0, std, generator=gen)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (b, t, vocab), or the mean cross-entropy if `targets` is given."""
        _, t = idx.shape
        if t > self.cfg.block_size:
            raise ValueError(f"sequence of {t} > block_size {self.cfg.block_size}")
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() counts tied ones once


@torch.no_grad()
def evaluate(model: GPT, data: Corpus, batches: int = 8, batch_size: int = 16) -> float:
    """Mean held-out loss over fixed, evenly spaced windows: same model, same number."""
    was_training = model.training
    model.eval()
    try:
        losses = [
            float(model(x, y))
            for x, y in data.eval_batches(batches, batch_size, model.cfg.block_size)
        ]
    finally:
        model.train(was_training)
    return sum(losses) / len(losses)


def tiny_gpt(**kwargs: int) -> GPT:
    """The demo's model; ``kwargs`` override GPTConfig fields (the run config's model.kwargs)."""
    return GPT(GPTConfig(**kwargs))
