"""secure_aggregation as a per-run option: DiLoCo, run.toml, SwarmAverager; the Python
API training three peers in one process through SecAgg."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

import shoal
from shoal.diloco import DiLoCo
from shoal.training.run_config import ConfigError, RunConfig, dump_run_config, load_run_config
from shoal.training.swarm_averager import SwarmAverager
from tests.tiny_models import Regression

TOML = """
[run]
name = "r"
{extra}
[node]
data_dir = "{d}"
"""


def _load(tmp_path: Path, extra: str) -> RunConfig:
    p = tmp_path / "run.toml"
    p.write_text(TOML.format(extra=extra, d=tmp_path / "n0"))
    return load_run_config(p)


def test_run_toml_option(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "secure_aggregation = true")
    assert cfg.secure_aggregation is True
    again = tmp_path / "again.toml"
    again.write_text(dump_run_config(cfg))
    assert load_run_config(again).secure_aggregation is True
    assert _load(tmp_path, "").secure_aggregation is False
    with pytest.raises(ConfigError, match="masks hide each peer's update"):
        _load(tmp_path, 'secure_aggregation = true\naggregator = "median"')
    with pytest.raises(ConfigError, match="group_size must be <= 128"):
        _load(tmp_path, "secure_aggregation = true\ngroup_size = 200")
    with pytest.raises(ConfigError, match="true or false"):
        _load(tmp_path, 'secure_aggregation = "yes"')


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "centered_clip", "krum"])
def test_diloco_refuses_a_robust_rule_with_secagg(rule: str) -> None:
    m = Regression()
    with pytest.raises(ValueError, match="reveal only the sum") as exc:
        DiLoCo(m, torch.optim.SGD(m.parameters(), lr=0.1), run="x", node=None,  # type: ignore[arg-type]
               aggregator=rule, secure_aggregation=True)  # fmt: skip
    assert repr(rule) in str(exc.value)
    with pytest.raises(ValueError, match="aggregator='mean'"):
        SwarmAverager(None, "x", aggregator=rule, secure_aggregation=True)  # type: ignore[arg-type]


@pytest.mark.parametrize("compression", ["int4", "int4z"])
def test_diloco_refuses_int4_with_secagg(compression: str) -> None:
    m = Regression()
    with pytest.raises(ValueError, match="supports compression 'none' or 'int8'"):
        DiLoCo(m, torch.optim.SGD(m.parameters(), lr=0.1), run="x", node=None,  # type: ignore[arg-type]
               compression=compression, secure_aggregation=True)  # fmt: skip


def _train(opt: DiLoCo, model: Regression, seed: int, steps: int,
           errors: list[BaseException]) -> None:  # fmt: skip
    try:
        g = torch.Generator().manual_seed(seed)
        w = torch.arange(8, dtype=torch.float32).reshape(8, 1)
        for _ in range(steps):
            x = torch.randn(16, 8, generator=g)
            loss = model(x, x @ w)
            opt.zero_grad()
            loss.backward()
            opt.step(samples=16 * (seed + 1))  # unequal weights
    except BaseException as exc:
        errors.append(exc)


@pytest.mark.slow
def test_python_api_three_peers_train_through_secagg(tmp_path: Path) -> None:
    n, h = 3, 5
    target = sum(16 * (s + 1) for s in range(n)) * h
    nodes = [shoal.start_node(tmp_path / "n0", run="sa", target_samples=target, deadline_s=20)]
    try:
        boot = str(nodes[0].node.contact)
        for i in range(1, n):
            nodes.append(shoal.start_node(tmp_path / f"n{i}", run="sa", target_samples=target,
                                          deadline_s=20, bootstrap=[boot]))  # fmt: skip
        models = [Regression() for _ in range(n)]
        opts = [
            shoal.DiLoCo(m, torch.optim.SGD(m.parameters(), lr=0.01), run="sa", node=nd,
                         inner_steps=h, compression="none", join_existing=False,
                         secure_aggregation=True)
            for m, nd in zip(models, nodes, strict=True)
        ]  # fmt: skip
        errors: list[BaseException] = []
        ts = [threading.Thread(target=_train, args=(o, m, s, 2 * h, errors))
              for s, (o, m) in enumerate(zip(opts, models, strict=True))]  # fmt: skip
        for t in ts:
            t.start()
        for t in ts:
            t.join(180)
        assert not errors, errors
        assert [x.round for x in opts[0].history] == [1, 2]
        for o in opts[1:]:
            assert [x.model_hash for x in o.history] == [x.model_hash for x in opts[0].history]
            assert torch.equal(o.global_flat, opts[0].global_flat)
        assert all(x.group_size == n for x in opts[0].history)
    finally:
        for nd in nodes:
            nd.stop()
