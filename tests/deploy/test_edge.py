"""The edge profile: a real address-space cap, cgroup limits, small batches, CLI errors."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.cli.node_cmd import edge_run_config
from shoal.runtime.edge import (
    EdgeProfile,
    ProfileError,
    cgroup_memory_limit,
)
from shoal.training.run_config import RunConfig, dump_run_config


def _py(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_cap_makes_a_big_allocation_fail_inside_the_process() -> None:
    r = _py(
        "from shoal.runtime.edge import cap_memory\n"
        "cap_memory(256 * 2**20)\n"
        "small = bytearray(32 * 2**20)\n"  # fits
        "try:\n"
        "    big = bytearray(512 * 2**20)\n"
        "except MemoryError:\n"
        "    print('capped')\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "capped"


def test_cap_never_raises_an_existing_limit() -> None:
    r = _py(
        "import resource\n"
        "from shoal.runtime.edge import cap_memory\n"
        "resource.setrlimit(resource.RLIMIT_AS, (300 * 2**20, resource.RLIM_INFINITY))\n"
        "print(cap_memory(2**30) // 2**20, resource.getrlimit(resource.RLIMIT_AS)[0] // 2**20)\n"
    )
    assert r.stdout.split() == ["300", "300"], r.stderr


def test_importing_the_module_caps_nothing() -> None:
    assert resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("max\n", None),  # v2, no limit
        ("536870912\n", 512 * 2**20),
        ("9223372036854771712\n", None),  # v1's "no limit"
        ("garbage\n", None),
    ],
)
def test_cgroup_memory_limit(tmp_path: Path, content: str, expected: int | None) -> None:
    f = tmp_path / "memory.max"
    f.write_text(content)
    assert cgroup_memory_limit((tmp_path / "missing", f)) == expected


def test_profile_rejects_nonsense() -> None:
    with pytest.raises(ProfileError):
        EdgeProfile(memory_mb=64)
    with pytest.raises(ProfileError):
        EdgeProfile(max_batch=0)


def test_small_batches_keep_the_swarm_target(tmp_path: Path) -> None:
    cfg = RunConfig(name="r", data_dir=tmp_path, expected_peers=4, inner_steps=50, batch_size=16)
    target = cfg.effective_target
    edge_run_config(cfg, EdgeProfile())
    assert cfg.batch_size == 4
    # the round still closes where the other (big-batch) peers expect it to
    assert cfg.effective_target == target == 3200


def _shoal(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
        env={"COLUMNS": "300", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "tiny"], "--profile must be one of"),
        (["--profile", "edge", "--memory-mb", "64"], "below 256 MiB"),
        (["--memory-mb", "900"], "only applies to --profile edge"),
        (["--profile", "edge", "--memory-mb", "400"], "leaves no room"),
    ],
)
def test_bad_profile_options_are_clear_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    r = _shoal("node", "start", "--data-dir", str(tmp_path), *args)
    assert r.returncode == 2
    assert message in " ".join(r.stderr.split()), r.stderr


@pytest.mark.slow
def test_edge_node_trains_under_its_cap(tmp_path: Path) -> None:
    cfg = RunConfig(
        name="edge", data_dir=tmp_path / "n", rounds=1, inner_steps=6, batch_size=32,
        expected_peers=1, deadline_s=5, result_file=tmp_path / "n" / "result.json",
        progress_file=tmp_path / "n" / "progress.jsonl",
    )  # fmt: skip
    (tmp_path / "run.toml").write_text(dump_run_config(cfg))
    r = _shoal("train", "--config", str(tmp_path / "run.toml"), "--profile", "edge")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "address space capped at 1024 MiB" in " ".join(r.stderr.split())
    result = json.loads(cfg.result_file.read_text())  # type: ignore[union-attr]
    assert result["rounds"] == 1 and result["local_steps"] >= 1
    # batches were capped to 4 samples: the round's samples are steps * 4
    assert result["history"][0]["total_samples"] == 4 * result["local_steps"]


@pytest.mark.slow
def test_out_of_memory_under_the_cap_is_reported(tmp_path: Path) -> None:
    # A model far too big for the cap: the node says so instead of dumping a traceback.
    cfg = RunConfig(
        name="edge", data_dir=tmp_path / "n", rounds=1, inner_steps=2, expected_peers=1,
        model_kwargs={"n_embd": 2048, "n_layer": 8, "n_head": 8},
    )  # fmt: skip
    (tmp_path / "run.toml").write_text(dump_run_config(cfg))
    r = _shoal("train", "--config", str(tmp_path / "run.toml"), "--profile", "edge")
    assert r.returncode == 1
    err = " ".join(r.stderr.split())
    assert "out of memory under the edge profile's 1024 MiB cap" in err
    assert "Traceback" not in r.stderr
