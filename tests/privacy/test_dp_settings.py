"""Turning DP on for a run: settings checked with clear errors ([privacy] in run.toml,
``DpSettings`` in the API), the accountant's state surviving a checkpoint, the
/metrics gauges, and the DP-SGD inner loop's pieces (Opacus) on the demo model."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from opacus.accountants import RDPAccountant

from shoal.diloco import DiLoCo
from shoal.privacy import DpPseudoGradients, DpSettings, DpSgdSettings, clip_and_noise
from shoal.privacy.dp_models import tiny_gpt as dp_tiny_gpt
from shoal.privacy.dp_sgd import TokenWindows, private_inner_loop
from shoal.runtime.health import HealthServer, Readiness
from shoal.training.data import Corpus
from shoal.training.model import tiny_gpt
from shoal.training.run_config import ConfigError, RunConfig, dump_run_config, load_run_config


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_norm": 0.0, "noise_multiplier": 1.0}, "clip_norm must be finite and > 0"),
        ({"clip_norm": -1.0, "noise_multiplier": 1.0}, "clip_norm must be finite and > 0"),
        ({"clip_norm": math.inf, "noise_multiplier": 1.0}, "clip_norm must be finite"),
        ({"clip_norm": 1.0, "noise_multiplier": math.nan}, "noise_multiplier must be finite"),
        ({"clip_norm": 1.0, "noise_multiplier": 0}, "noise_multiplier must be finite and > 0"),
        ({"clip_norm": True, "noise_multiplier": 1.0}, "clip_norm must be a number"),
        ({"clip_norm": "1", "noise_multiplier": 1.0}, "clip_norm must be a number"),
        ({"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 0.0}, "delta must be finite"),
        ({"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 0.5}, r"delta must be in \(0, "),
    ],
)
def test_bad_dp_settings_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DpSettings(**kwargs)


def test_bad_dp_sgd_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="dp_sgd_noise_multiplier must be finite and > 0"):
        DpSgdSettings(0.0, 1.0)
    with pytest.raises(ValueError, match="dp_sgd_max_grad_norm must be a number"):
        DpSgdSettings(1.0, None)  # type: ignore[arg-type]
    s = DpSgdSettings(2, 3)
    assert (s.noise_multiplier, s.max_grad_norm, s.delta) == (2.0, 3.0, 1e-5)


def test_dp_settings_make_the_mechanism() -> None:
    s = DpSettings(clip_norm=2, noise_multiplier=0.5, delta=1e-6)
    assert s.noise_std == 1.0 and isinstance(s.clip_norm, float)
    m = s.mechanism(torch.Generator().manual_seed(0))
    assert (m.clip_norm, m.noise_multiplier, m.delta, m.releases) == (2.0, 0.5, 1e-6, 0)
    assert m.epsilon_spent() == 0.0
    out = m.privatize(torch.full((1000,), 1.0))  # norm 31.6, clipped to 2
    assert m.last_norm == pytest.approx(math.sqrt(1000))
    assert m.releases == 1 and out.dtype == torch.float32
    assert m.report()["epsilon"] == m.epsilon_spent() > 0


def test_diloco_refuses_dp_that_is_not_dp_settings() -> None:
    model = torch.nn.Linear(2, 1)
    with pytest.raises(TypeError, match=r"shoal\.privacy\.DpSettings"):
        DiLoCo(model, torch.optim.SGD(model.parameters(), lr=0.1), run="x", node=None,  # type: ignore[arg-type]
               dp={"clip_norm": 1.0, "noise_multiplier": 1.0})  # type: ignore[arg-type]  # fmt: skip


def test_clip_and_noise_reports_the_norm_before_clipping() -> None:
    out, norm = clip_and_noise(torch.full((4,), 3.0), 1.0, 0.0, torch.Generator())
    assert norm == pytest.approx(6.0)
    assert float(out.norm()) == pytest.approx(1.0, rel=1e-4) and float(out.norm()) <= 1.0


def test_budget_survives_a_checkpoint_and_bad_history_is_refused() -> None:
    a = DpPseudoGradients(1.0, 0.8, 1e-5, generator=torch.Generator().manual_seed(1))
    for _ in range(4):
        a.privatize(torch.randn(8))
    b = DpPseudoGradients(1.0, 0.8, 1e-5)
    b.load_state_dict(a.state_dict())
    assert b.releases == 4 and b.epsilon_spent() == a.epsilon_spent()
    b.privatize(torch.randn(8))
    ref = RDPAccountant()
    for _ in range(5):
        ref.step(noise_multiplier=0.8, sample_rate=1.0)
    assert b.epsilon_spent() == pytest.approx(ref.get_epsilon(1e-5), rel=1e-12)
    with pytest.raises(ValueError, match="does not add up"):
        b.load_state_dict({"history": [(0.8, 1.0, 3)], "releases": 4})
    with pytest.raises(ValueError, match="does not add up"):
        b.load_state_dict({"history": [(0.0, 1.0, 4)], "releases": 4})


# -- [privacy] in run.toml -----------------------------------------------------------
def _toml(tmp_path: Path, privacy: str) -> Path:
    p = tmp_path / "run.toml"
    p.write_text(f'[run]\nname = "r"\n[node]\ndata_dir = "{tmp_path}"\n[privacy]\n{privacy}\n')
    return p


def test_privacy_table_parses(tmp_path: Path) -> None:
    cfg = load_run_config(_toml(tmp_path, "clip_norm = 0.5\nnoise_multiplier = 1.2\ndelta = 1e-6"))
    assert cfg.dp == DpSettings(0.5, 1.2, 1e-6)
    assert cfg.dp_sgd is None
    cfg = load_run_config(
        _toml(tmp_path, "dp_sgd_noise_multiplier = 1.0\ndp_sgd_max_grad_norm = 0.7")
    )
    assert cfg.dp is None and cfg.dp_sgd == DpSgdSettings(1.0, 0.7, 1e-5)
    # the demo writes configs with dump_run_config: [privacy] round-trips
    cfg.dp_clip_norm, cfg.dp_noise_multiplier, cfg.dp_delta = 2.0, 0.9, 1e-7
    again = tmp_path / "again.toml"
    again.write_text(dump_run_config(cfg))
    back = load_run_config(again)
    assert (back.dp, back.dp_sgd) == (cfg.dp, cfg.dp_sgd)
    no_dp = RunConfig(name="r", data_dir=tmp_path)
    assert "[privacy]" not in dump_run_config(no_dp) and no_dp.dp is None


@pytest.mark.parametrize(
    ("privacy", "match"),
    [
        ("clip_norm = 0.0\nnoise_multiplier = 1.0", "privacy.clip_norm must be finite and > 0"),
        ("clip_norm = 1.0\nnoise_multiplier = -2", "privacy.noise_multiplier must be finite"),
        ("clip_norm = nan\nnoise_multiplier = 1.0", "privacy.clip_norm must be finite"),
        ('clip_norm = "1"\nnoise_multiplier = 1.0', "privacy.clip_norm must be a number"),
        ("clip_norm = true\nnoise_multiplier = 1.0", "privacy.clip_norm must be a number"),
        ("clip_norm = 1.0", "privacy.clip_norm is set but privacy.noise_multiplier is not"),
        ("noise_multiplier = 1.0", "privacy.noise_multiplier is set but privacy.clip_norm"),
        ("clip_norm = 1.0\nnoise_multiplier = 1.0\ndelta = 0.5", r"privacy.delta must be in"),
        ("delta = 1e-5", "privacy.delta is set but no mechanism is"),
        ("dp_sgd_noise_multiplier = 1.0", "privacy.dp_sgd_max_grad_norm is not: set both"),
        ("dp_sgd_noise_multiplier = 1.0\ndp_sgd_max_grad_norm = 0", "dp_sgd_max_grad_norm must"),
        ("epsilon = 3.0", "unknown key privacy.epsilon"),
    ],
)
def test_bad_privacy_table_is_a_clear_config_error(
    tmp_path: Path, privacy: str, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        load_run_config(_toml(tmp_path, privacy))


# -- /metrics ------------------------------------------------------------------------
def test_metrics_export_epsilon_gauges() -> None:
    fake_node: Any = SimpleNamespace(
        transport=SimpleNamespace(bytes_sent=1, bytes_received=2), core=None, peers=list
    )
    readiness = Readiness()
    server = HealthServer(fake_node, readiness)
    readiness.set(True, "training", round=3, dp_epsilon=1.25, dp_delta=1e-5, dp_sgd_epsilon=0.5)
    body = asyncio.run(server._metrics(None)).body.decode()  # type: ignore[arg-type]
    for line in ("shoal_dp_epsilon 1.25", "shoal_dp_delta 1e-05", "shoal_dp_sgd_epsilon 0.5",
                 "# TYPE shoal_dp_epsilon gauge", "shoal_round 3"):  # fmt: skip
        assert line in body.splitlines()
    readiness.set(True, "training", round=3)  # DP off: no DP gauges
    assert "dp_" not in asyncio.run(server._metrics(None)).body.decode()  # type: ignore[arg-type]


# -- DP-SGD inner loop ---------------------------------------------------------------
def _corpus(n: int = 20_000) -> Corpus:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8)
    return Corpus(tokens, tokens[:1000], ("x",), "fp")


def test_token_windows() -> None:
    w = TokenWindows(torch.arange(10, dtype=torch.uint8), 4)
    assert len(w) == 6
    x, y = w[5]
    assert x.tolist() == [5, 6, 7, 8] and y.tolist() == [6, 7, 8, 9]
    with pytest.raises(ValueError, match="block_size 4 needs more"):
        TokenWindows(torch.arange(4, dtype=torch.uint8), 4)


def test_token_windows_of_a_shard_are_the_stripes_plain_training_samples() -> None:
    # DP-SGD's records must be the same windows the peer trains on without DP: its
    # own 16 KiB stripes of the split, not a contiguous slice.
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (200_000,), generator=g, dtype=torch.uint8)
    corpus = Corpus(tokens, tokens[:1000], ("x",), "fp")
    block, world = 16, 4
    per_rank = []
    for rank in range(world):
        w = TokenWindows(tokens, block, corpus.shard_stripes("train", block, (rank, world)))
        starts = {int(w.starts[i // w.per_stripe]) + i % w.per_stripe for i in range(len(w))}
        per_rank.append(starts)
        assert len(starts) == len(w) and len(w.starts) > 1  # striped: several stripes
        x, y = w[len(w) - 1]
        assert x.shape == (block,) and torch.equal(x[1:], y[:-1])
        with pytest.raises(IndexError):
            w[len(w)]
        # every window plain training draws for this rank is one of DP-SGD's records
        xb, _ = next(corpus.batches("train", 64, block, seed=5, shard=(rank, world)))
        index = {tuple(tokens[s : s + block].tolist()): s for s in starts}
        assert all(tuple(row.tolist()) in index for row in xb)
    for a in range(world):
        for b in range(a + 1, world):
            assert not per_rank[a] & per_rank[b]


def test_demo_gpt_is_refused_for_dp_sgd_with_the_parameter_named() -> None:
    model = tiny_gpt(n_layer=1, n_embd=16, n_head=2, block_size=16)
    with pytest.raises(ValueError, match=r"parameter wpe\.weight has no per-sample gradient"):
        private_inner_loop(
            model, torch.optim.SGD(model.parameters(), lr=0.1), _corpus(),
            DpSgdSettings(1.0, 1.0), batch_size=8, block_size=16, seed=0,
        )  # fmt: skip


def test_dp_sgd_inner_loop_on_the_dp_ready_gpt_reports_opacus_epsilon() -> None:
    torch.set_num_threads(1)
    kw = {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 16}
    model, plain = dp_tiny_gpt(**kw), tiny_gpt(**kw)
    idx = torch.randint(0, 256, (3, 16))
    assert torch.equal(model(idx), plain(idx))  # same model, positions looked up per sample
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    settings = DpSgdSettings(noise_multiplier=1.1, max_grad_norm=0.5, delta=1e-6)
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = private_inner_loop(model, inner, _corpus(), settings, batch_size=8, block_size=16,
                              shard=(1, 2), seed=3)  # fmt: skip
    assert loop.records == 10_000 - 16 and loop.sample_rate == pytest.approx(
        8 / loop.records, rel=1e-3
    )
    # the probe step left the params and grads alone
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())
    sizes = []
    for _ in range(6):
        x, y = next(loop.batches)
        sizes.append(len(x))
        loop.optimizer.zero_grad()
        loop.model(x, y).backward()
        loop.optimizer.step()
    assert loop.steps == 6 and len(set(sizes)) > 1  # Poisson sampling: batch sizes vary
    ref = RDPAccountant()
    for _ in range(6):
        ref.step(noise_multiplier=1.1, sample_rate=loop.sample_rate)
    assert loop.epsilon() == pytest.approx(ref.get_epsilon(1e-6), rel=1e-12)
    rep = loop.report()
    assert rep["steps"] == 6 and rep["epsilon"] == loop.epsilon() and rep["delta"] == 1e-6
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
