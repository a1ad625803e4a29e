"""The arithmetic of one DiLoCo round, with no networking.

Every peer holds the same *global* parameters as one flat fp32 buffer. A round:
  1. copy global into the local model, take H inner steps (AdamW);
  2. pseudo-gradient = global - local                      (`pseudo_gradient`)
  3. check each received update, average them by samples   (`validate_update`,
                                                             `weighted_average`)
  4. global <- Nesterov SGD step with that average          (`OuterOptimizer`)
  5. `model_hash(global)` must now agree across peers.

Determinism: peers must end a round with bit-identical parameters, so this module
uses only separately rounded IEEE ops (mul, add, sub). It avoids `alpha=`, `addcmul`
and `lerp`, whose CPU kernels may fuse multiply-add (FMA) differently on different
CPUs. Sums depend on order, so callers pass contributions in a canonical order
(sorted by peer id).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from shoal.numerics import all_finite

HASH_FORMAT = b"shoal-tensors-v1\n"


class UpdateRejected(ValueError):
    """A peer's update cannot be used this round. Drop it; do not crash."""


class WrongShapeError(UpdateRejected):
    pass


class NonFiniteUpdateError(UpdateRejected):
    pass


class WrongVersionError(UpdateRejected):
    """The update was computed from another model version (stale replay or from the future)."""


# --- flat parameter buffer -------------------------------------------------------------


def flatten_params(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """All `params` concatenated into one new contiguous fp32 CPU buffer."""
    parts = [p.detach().reshape(-1).to(device="cpu", dtype=torch.float32) for p in params]
    if not parts:
        return torch.zeros(0, dtype=torch.float32)
    return torch.cat(parts)


@torch.no_grad()
def unflatten_into(flat: torch.Tensor, params: Iterable[torch.Tensor]) -> None:
    """Copy `flat` back into `params` in place (the inverse of `flatten_params`)."""
    params = list(params)
    total = sum(p.numel() for p in params)
    if flat.dim() != 1 or flat.numel() != total:
        raise WrongShapeError(f"flat buffer of shape {tuple(flat.shape)}; params need {total}")
    offset = 0
    for p in params:
        n = p.numel()
        p.copy_(flat[offset : offset + n].view_as(p))
        offset += n


# --- one round -------------------------------------------------------------------------


def pseudo_gradient(global_flat: torch.Tensor, local_flat: torch.Tensor) -> torch.Tensor:
    """global - local: the direction the inner steps moved, as a gradient (descent = minus)."""
    if global_flat.shape != local_flat.shape:
        raise WrongShapeError(f"{tuple(global_flat.shape)} vs {tuple(local_flat.shape)}")
    return global_flat - local_flat


def validate_update(
    flat: torch.Tensor, expected_numel: int, model_version: int, update_version: int
) -> None:
    """Raise an UpdateRejected subclass unless `flat` is usable for this round.

    `model_version` is the round the receiver is in; `update_version` the one the
    sender says it started from. Cheap checks first, the full NaN/Inf scan last.
    """
    if update_version != model_version:
        kind = "stale" if update_version < model_version else "future"
        raise WrongVersionError(
            f"{kind} update for version {update_version}; model is at {model_version}"
        )
    if flat.dim() != 1 or flat.numel() != expected_numel:
        raise WrongShapeError(
            f"update of shape {tuple(flat.shape)}; expected flat ({expected_numel},)"
        )
    if flat.dtype != torch.float32:
        raise WrongShapeError(f"update of dtype {flat.dtype}; expected torch.float32")
    if not all_finite(flat):
        bad = int((~torch.isfinite(flat)).sum())
        raise NonFiniteUpdateError(f"update holds {bad} NaN/Inf value(s)")


def weighted_average(contributions: Sequence[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """sum_i(x_i * n_i) / sum_i(n_i), weighting each peer by the samples `n_i` it processed.

    Computed as sum_i(x_i * (n_i / N)) in fp32, in the given order.
    Peers with 0 samples are skipped; at least one must have samples.
    """
    if not contributions:
        raise ValueError("weighted_average of no contributions")
    shape = contributions[0][0].shape
    for x, n in contributions:
        if x.shape != shape:
            raise WrongShapeError(f"contribution of shape {tuple(x.shape)}; others {tuple(shape)}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"sample count must be a non-negative int, got {n!r}")
    total = sum(n for _, n in contributions)
    if total == 0:
        raise ValueError("no contribution processed any samples")
    acc = torch.zeros(shape, dtype=torch.float32)
    tmp = torch.empty(shape, dtype=torch.float32)
    for x, n in contributions:
        if n == 0:
            continue
        # n / total in float64 then one rounding to fp32: the same weight on every peer.
        weight = torch.tensor(n / total, dtype=torch.float32)
        torch.mul(x.to(torch.float32), weight, out=tmp)
        acc.add_(tmp)
    return acc


# --- outer optimizer -------------------------------------------------------------------


class OuterOptimizer:
    """Nesterov SGD on the flat global params, as in the DiLoCo paper (lr 0.7, momentum 0.9).

    Same update as torch.optim.SGD(nesterov=True, dampening=0, weight_decay=0):
        buf <- momentum * buf + g          (buf <- g on the first step)
        p   <- p - lr * (g + momentum * buf)
    """

    def __init__(self, lr: float = 0.7, momentum: float = 0.9, nesterov: bool = True) -> None:
        if lr <= 0 or not 0 <= momentum < 1:
            raise ValueError(f"need lr > 0 and 0 <= momentum < 1, got {lr}, {momentum}")
        self.lr = lr
        self.momentum = momentum
        self.nesterov = nesterov
        self.steps = 0
        self.momentum_buffer: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, params: torch.Tensor, pseudo_grad: torch.Tensor) -> None:
        """Update `params` (flat fp32) in place with the averaged pseudo-gradient."""
        if params.shape != pseudo_grad.shape or params.dtype != torch.float32:
            raise WrongShapeError(
                f"params {tuple(params.shape)} {params.dtype}, grad {tuple(pseudo_grad.shape)}"
            )
        m = torch.tensor(self.momentum, dtype=torch.float32)
        lr = torch.tensor(self.lr, dtype=torch.float32)
        buf = self.momentum_buffer
        if buf is None:
            buf = self.momentum_buffer = pseudo_grad.to(torch.float32, copy=True)
        else:
            buf.mul_(m).add_(pseudo_grad)
        direction = buf.mul(m).add_(pseudo_grad) if self.nesterov else buf.clone()
        params.sub_(direction.mul_(lr))
        self.steps += 1

    @torch.no_grad()
    def readout(self, params: torch.Tensor) -> torch.Tensor:
        """The model to use at this point (evaluate, export, serve): Nesterov's iterate.

        In this (torch's) form of Nesterov, ``params`` is the look-ahead point where the
        next pseudo-gradient is taken: p = x - lr * momentum * buf, where x follows
        heavy-ball momentum (x <- x - lr * buf). The look-ahead is there to train from;
        x is the iterate. Read out after the last round, x held out 0.5-3.6% lower than
        p, more at larger outer lr (docs/BENCHMARKS.md, "The model a run ends with").
        Peers that share ``params`` and ``buf`` compute the same bits. Without Nesterov
        momentum it is ``params``.
        """
        buf = self.momentum_buffer
        if not self.nesterov or self.momentum == 0 or buf is None:
            return params.clone()
        if buf.shape != params.shape:
            raise WrongShapeError(f"params {tuple(params.shape)}, momentum {tuple(buf.shape)}")
        step = torch.tensor(self.lr * self.momentum, dtype=torch.float32)
        return params.add(buf.mul(step))

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "steps": self.steps,
            "momentum_buffer": None
            if self.momentum_buffer is None
            else self.momentum_buffer.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lr = float(state["lr"])
        self.momentum = float(state["momentum"])
        self.nesterov = bool(state["nesterov"])
        self.steps = int(state["steps"])
        buf = state["momentum_buffer"]
        self.momentum_buffer = None if buf is None else buf.to(torch.float32).clone()


# --- hash ------------------------------------------------------------------------------


def model_hash(tensors: torch.Tensor | Mapping[str, torch.Tensor]) -> str:
    """sha256 hex over a canonical encoding of one tensor or a name -> tensor mapping.

    Encoding: a format tag, then per tensor (mappings sorted by name): name, dtype and
    shape as one text line, then the raw little-endian bytes. So equal hashes mean equal
    names, dtypes, shapes and bits; it does not depend on dict order or strides.
    """
    if sys.byteorder != "little":
        raise RuntimeError("model_hash assumes a little-endian host")
    items = [("", tensors)] if isinstance(tensors, torch.Tensor) else sorted(tensors.items())
    h = hashlib.sha256(HASH_FORMAT)
    for name, t in items:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}\t{t.dtype}\t{list(t.shape)}\n".encode())
        # Viewed as bytes so any dtype works (bf16 has no numpy twin).
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()
