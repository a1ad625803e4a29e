"""Optional per-sample DP-SGD for the inner loop, through Opacus.

Wraps the peer's model, optimizer and data loader with Opacus's PrivacyEngine (RDP
accountant, Poisson sampling): each inner step clips every sample's gradient to
``max_grad_norm`` and adds Gaussian noise. The engine's epsilon covers the inner steps
(sample-level privacy); pseudo-gradient noise (dp_pseudo_gradients.py) covers the
peer's release as a whole. Opacus needs per-sample gradient support for each layer
(Linear, Conv, Embedding, LayerNorm, ... ; not every custom module), and every layer
must see the batch as its first dimension: ``check_per_sample_gradients`` says which
parameter breaks that, rather than Opacus's shape error at the first step.

Both the noise and the batch sampling draw from OS-seeded generators unless a seed is
given (tests): the run's seed is known to every peer, so noise or sampling drawn from
it would be predictable, and the accounted epsilon void.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from opacus import PrivacyEngine

    from shoal.privacy.settings import DpSgdSettings
    from shoal.training.data import Corpus

# Samples in the probe batch of check_per_sample_gradients (2: a layer that sees no
# batch dimension shows up as a first dimension other than 2).
PROBE_BATCH = 2


def _generator(seed: int | None) -> torch.Generator:
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") >> 1
    return torch.Generator().manual_seed(seed)


def make_private_inner(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader[Any],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    seed: int | None = None,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.utils.data.DataLoader[Any], PrivacyEngine]:
    """(model to call, DP optimizer, Poisson-sampled loader, engine). ``seed`` only for
    tests: without it noise and sampling are unpredictable (OS-seeded)."""
    if not noise_multiplier > 0 or not max_grad_norm > 0:
        raise ValueError("noise_multiplier and max_grad_norm must be > 0")
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader

    noise_gen = _generator(seed)
    sample_gen = _generator(None if seed is None else seed + 1)
    # Poisson sampling with our own generator (Opacus would use torch's global RNG,
    # which the run's seed fixes); sample rate = 1 / len(loader), as Opacus's own.
    poisson = DPDataLoader.from_data_loader(loader, generator=sample_gen)
    with warnings.catch_warnings():  # secure_mode advice, not an error
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="rdp")
        dp_model, dp_opt, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=poisson,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            noise_generator=noise_gen,
            poisson_sampling=False,  # the loader above already samples
        )
    return dp_model, dp_opt, dp_loader, engine


def inner_epsilon(engine: PrivacyEngine, delta: float) -> float:
    if not engine.accountant.history:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(engine.get_epsilon(delta))


def check_per_sample_gradients(dp_model: torch.nn.Module, *batch: torch.Tensor) -> None:
    """One forward/backward of ``model(*batch)`` (a loss); ValueError naming the first
    parameter whose per-sample gradient is not batch-shaped. Leaves no gradients."""
    n = batch[0].shape[0]
    try:
        with warnings.catch_warnings():  # torch: "full backward hook ... no inputs require grad"
            warnings.simplefilter("ignore")
            dp_model(*batch).backward()
        for name, p in dp_model.named_parameters():
            gs = getattr(p, "grad_sample", None)
            if p.requires_grad and (gs is None or gs.shape[0] != n):
                got = "none" if gs is None else f"{gs.shape[0]} rows"
                raise ValueError(
                    f"DP-SGD: parameter {name.removeprefix('_module.')} has no per-sample "
                    f"gradient for a batch of {n} ({got}); each layer must get the batch "
                    "as its first dimension (e.g. a position embedding called on "
                    "arange(t) needs arange(t).expand(batch, t)), and be a layer "
                    "Opacus supports"
                )
    finally:
        for p in dp_model.parameters():
            p.grad = None
            if hasattr(p, "grad_sample"):
                p.grad_sample = None


class TokenWindows(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Every (input, target) window of ``block_size`` tokens in a 1-D token tensor, or
    only those inside the given stripes (a peer's shard, `Corpus.shard_stripes`): the
    records DP-SGD samples from (and protects)."""

    def __init__(
        self,
        tokens: torch.Tensor,
        block_size: int,
        stripes: tuple[torch.Tensor, int] | None = None,
    ) -> None:
        if stripes is None:
            if tokens.numel() <= block_size:
                raise ValueError(f"{tokens.numel()} tokens: block_size {block_size} needs more")
            stripes = (torch.zeros(1, dtype=torch.long), tokens.numel() - block_size)
        starts, per_stripe = stripes
        if per_stripe < 1 or starts.numel() < 1:
            raise ValueError("no window of block_size fits in the stripes")
        self.tokens, self.block_size = tokens, block_size
        self.starts, self.per_stripe = starts, per_stripe

    def __len__(self) -> int:
        return self.starts.numel() * self.per_stripe

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        at = int(self.starts[i // self.per_stripe]) + i % self.per_stripe
        row = self.tokens[at : at + self.block_size + 1].long()
        return row[:-1], row[1:]


@dataclass
class PrivateInner:
    """A DP-SGD inner loop: call ``model``, step ``optimizer``, draw ``batches``."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    engine: PrivacyEngine
    settings: DpSgdSettings
    sample_rate: float
    records: int

    def epsilon(self) -> float:
        return inner_epsilon(self.engine, self.settings.delta)

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.engine.accountant.history)

    def report(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon(),
            "delta": self.settings.delta,
            "noise_multiplier": self.settings.noise_multiplier,
            "max_grad_norm": self.settings.max_grad_norm,
            "sample_rate": self.sample_rate,
            "records": self.records,
            "steps": self.steps,
        }


def _endless(
    loader: torch.utils.data.DataLoader[Any],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        for x, y in loader:
            if len(x):  # Poisson sampling can draw an empty batch; it is still a step
                yield x, y  # (skipped: no step, no release, nothing to account)


def private_inner_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    corpus: Corpus,
    settings: DpSgdSettings,
    *,
    batch_size: int,
    block_size: int,
    shard: tuple[int, int] = (0, 1),
    seed: int | None = None,
) -> PrivateInner:
    """DP-SGD over this peer's shard of the training split, the same stripes plain
    training samples from (`Corpus.shard_stripes`; the records DP-SGD protects are
    their windows): expected batch ``batch_size``, Poisson-sampled windows."""
    stripes = corpus.shard_stripes("train", block_size, shard)
    data = TokenWindows(corpus.tokens("train"), block_size, stripes)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size)
    dp_model, dp_opt, dp_loader, engine = make_private_inner(
        model, optimizer, loader, noise_multiplier=settings.noise_multiplier,
        max_grad_norm=settings.max_grad_norm, seed=seed,
    )  # fmt: skip
    probe = [data[i] for i in range(PROBE_BATCH)]
    check_per_sample_gradients(
        dp_model, torch.stack([x for x, _ in probe]), torch.stack([y for _, y in probe])
    )
    return PrivateInner(
        dp_model, dp_opt, _endless(dp_loader), engine, settings, 1 / len(loader), len(data)
    )
