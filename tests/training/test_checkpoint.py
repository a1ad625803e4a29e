import os
from pathlib import Path

import pytest
import torch

from shoal.training.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from shoal.training.diloco_math import OuterOptimizer
from shoal.training.model import GPT, GPTConfig


def _small_ckpt() -> Checkpoint:
    gen = torch.Generator().manual_seed(0)
    return Checkpoint(
        params={"w": torch.randn(3, 4, generator=gen), "b": torch.randn(4, generator=gen)},
        round=12,
        momentum=torch.randn(16, generator=gen),
        extra={"run": "demo"},
    )


def test_round_trip_preserves_hash_and_state(tmp_path: Path) -> None:
    model = GPT(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16))
    outer = OuterOptimizer()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    outer.step(flat.clone(), torch.randn_like(flat))
    ckpt = Checkpoint(dict(model.named_parameters()), round=3, momentum=outer.momentum_buffer)
    path = tmp_path / "ckpt.safetensors"
    h = save_checkpoint(path, ckpt)
    loaded = load_checkpoint(path, expected_model_hash=h)
    assert loaded.model_hash == h == ckpt.model_hash and loaded.round == 3
    assert loaded.momentum is not None and outer.momentum_buffer is not None
    assert torch.equal(loaded.momentum, outer.momentum_buffer)
    assert model.load_state_dict(loaded.params, strict=False).missing_keys == ["head.weight"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]  # no temp left


def test_every_flipped_byte_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, _small_ckpt())
    raw = path.read_bytes()
    load_checkpoint(path)
    for i in range(len(raw)):
        corrupt = bytearray(raw)
        corrupt[i] ^= 0x01
        path.write_bytes(corrupt)
        with pytest.raises(CheckpointError):
            load_checkpoint(path)


def test_truncated_missing_and_unexpected_hash(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, _small_ckpt())
    with pytest.raises(CheckpointError, match="expected"):
        load_checkpoint(path, expected_model_hash="0" * 64)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_failed_write_keeps_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.safetensors"
    good = save_checkpoint(path, _small_ckpt())

    def boom(src: str, dst: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, Checkpoint({"w": torch.zeros(2)}, round=13))
    assert load_checkpoint(path).model_hash == good
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]
