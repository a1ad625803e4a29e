"""DiLoCo checkpoints as safetensors: global params, outer momentum, round, hashes.

Written atomically (temp file in the same directory, fsync, rename, fsync the
directory), so a crash leaves either the old checkpoint or the new one, never half.

Two hashes live in the safetensors metadata:
  - `model_hash`: `model_hash(params)`, the number peers compare each round and a
    joining peer checks the downloaded state against;
  - `checkpoint_hash`: over every tensor and every other metadata field, so a flipped
    byte anywhere (momentum, round, names) is caught on load, not just in the params.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from shoal.training.diloco_math import model_hash

FORMAT = "shoal-diloco-checkpoint-v1"
PARAM_PREFIX = "param."
MOMENTUM_KEY = "outer.momentum"


class CheckpointError(ValueError):
    """The checkpoint file is unreadable, corrupt, or not the state we expected."""


@dataclass
class Checkpoint:
    params: dict[str, torch.Tensor]  # name -> tensor (e.g. model.named_parameters())
    round: int
    momentum: torch.Tensor | None = None  # OuterOptimizer.momentum_buffer
    extra: dict[str, str] = field(default_factory=dict)  # free-form, covered by the hash

    @property
    def model_hash(self) -> str:
        return model_hash(self.params)


def _checkpoint_hash(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> str:
    fields = json.dumps(dict(meta), sort_keys=True).encode()
    return model_hash({**tensors, "meta": torch.frombuffer(bytearray(fields), dtype=torch.uint8)})


def _tensors(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (tied weights), so each is cloned.
    out = {PARAM_PREFIX + k: v.detach().cpu().contiguous().clone() for k, v in ckpt.params.items()}
    if ckpt.momentum is not None:
        out[MOMENTUM_KEY] = ckpt.momentum.detach().cpu().contiguous().clone()
    return out


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> str:
    """Write `ckpt` to `path` atomically; returns its model hash."""
    path = Path(path)
    tensors = _tensors(ckpt)
    meta = {
        **{f"extra.{k}": v for k, v in ckpt.extra.items()},
        "format": FORMAT,
        "round": str(ckpt.round),
        "model_hash": ckpt.model_hash,
    }
    meta["checkpoint_hash"] = _checkpoint_hash(tensors, meta)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename itself is only durable once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return meta["model_hash"]


def load_checkpoint(path: str | Path, expected_model_hash: str | None = None) -> Checkpoint:
    """Read and verify a checkpoint. Raises CheckpointError on any mismatch or corruption.

    `expected_model_hash`: the hash peers agree on, for a joining peer's download.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file (format={meta.get('format')!r})")
    stored = meta.pop("checkpoint_hash", None)
    if stored is None or _checkpoint_hash(tensors, meta) != stored:
        raise CheckpointError(f"{path}: checkpoint hash mismatch; the file is corrupt")
    try:
        round_ = int(meta["round"])
        params = {
            k.removeprefix(PARAM_PREFIX): v
            for k, v in tensors.items()
            if k.startswith(PARAM_PREFIX)
        }
        ckpt = Checkpoint(
            params=params,
            round=round_,
            momentum=tensors.get(MOMENTUM_KEY),
            extra={k.removeprefix("extra."): v for k, v in meta.items() if k.startswith("extra.")},
        )
        claimed = meta["model_hash"]
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: bad metadata: {e}") from e
    if ckpt.model_hash != claimed:
        raise CheckpointError(f"{path}: model hash {ckpt.model_hash} != recorded {claimed}")
    if expected_model_hash is not None and claimed != expected_model_hash:
        raise CheckpointError(
            f"{path}: model hash {claimed} is not the expected {expected_model_hash}"
        )
    return ckpt
