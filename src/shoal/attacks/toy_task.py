"""A small classification task where the effect of an attack shows within seconds.

Gaussian clusters in 16 dimensions, 4 classes, with overlap (so the loss has a floor
well above zero), learned by a 16-32-4 MLP. Every peer holds its own IID shard; the
evaluation set is separate. Everything derives from one seed: no downloads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DIM = 16
CLASSES = 4
HIDDEN = 32


@dataclass(frozen=True)
class ToyData:
    shards: list[tuple[torch.Tensor, torch.Tensor]]  # per peer (x, y)
    eval_x: torch.Tensor
    eval_y: torch.Tensor


def make_data(peers: int, per_peer: int = 256, eval_size: int = 2048, seed: int = 0) -> ToyData:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(CLASSES, DIM, generator=g) * 0.35

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, CLASSES, (n,), generator=g)
        x = centers[y] + torch.randn(n, DIM, generator=g)
        return x, y

    shards = [draw(per_peer) for _ in range(peers)]
    ex, ey = draw(eval_size)
    return ToyData(shards, ex, ey)


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(DIM, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, CLASSES)
    )


@torch.no_grad()
def eval_loss(model: torch.nn.Module, data: ToyData) -> float:
    return float(torch.nn.functional.cross_entropy(model(data.eval_x), data.eval_y))


def local_steps(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    shard: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    batch: int,
    generator: torch.Generator,
) -> int:
    """``steps`` minibatch steps on the peer's shard; returns the samples processed."""
    x, y = shard
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    return steps * batch
