"""The demo with the ledger on: real node processes, a `shoal chain` process, then
`shoal verify` on what they left behind after all of them exited."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shoal.training.demo import DemoConfig, run_demo


def _verify(ckpt: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "verify", str(ckpt), "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.slow
def test_demo_leaves_a_verifiable_lineage(tmp_path: Path) -> None:
    cfg = DemoConfig(nodes=2, rounds=2, inner_steps=4, batch_size=4, out=tmp_path)
    result = run_demo(cfg)
    assert result["model_hashes_equal"]
    assert result["anchored_rounds"] == [0, 1]
    ckpt = Path(result["verify_checkpoint"])
    assert ckpt.parent == tmp_path / "checkpoints"
    ok = _verify(ckpt, tmp_path)
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert "VERIFIED" in ok.stdout and "2 signed update commitments match" in ok.stdout
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 0x01
    bad = tmp_path / "checkpoints" / "tampered.safetensors"
    bad.write_bytes(bytes(data))
    fail = _verify(bad, tmp_path)
    assert fail.returncode == 1 and "VERIFY FAILED at checkpoint" in fail.stderr
