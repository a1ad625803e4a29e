"""``shoal train --config`` with a ``[privacy]`` table: two real node processes on
loopback, pseudo-gradient DP and DP-SGD inner steps both on. The result each prints
(``--json``) holds both epsilons, equal to Opacus's accountant for what the node did;
/metrics exports them while it trains; both nodes end with the same model."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from shoal.runtime.health import read_health_addr
from shoal.training.demo import DemoConfig, node_config, wait_contact
from shoal.training.run_config import RunConfig, dump_run_config

pytestmark = pytest.mark.slow

ROUNDS, H, SIGMA, CLIP, DELTA = 3, 4, 0.7, 0.2, 1e-6
SGD_SIGMA, SGD_CLIP = 1.3, 0.5


def _config(tmp_path: Path, i: int, boot: list[str]) -> RunConfig:
    demo = DemoConfig(nodes=2, rounds=ROUNDS, inner_steps=H, out=tmp_path, deadline_s=20,
                      batch_size=8)  # fmt: skip
    cfg = node_config(demo, i, boot)
    cfg.model_factory = "shoal.privacy.dp_models:tiny_gpt"  # the demo GPT, DP-SGD ready
    cfg.model_kwargs = {"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 32}
    cfg.block_size = 32
    cfg.dp_clip_norm, cfg.dp_noise_multiplier, cfg.dp_delta = CLIP, SIGMA, DELTA
    cfg.dp_sgd_noise_multiplier, cfg.dp_sgd_max_grad_norm = SGD_SIGMA, SGD_CLIP
    return cfg


def _start(cfg: RunConfig) -> subprocess.Popen[bytes]:
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.data_dir / "run.toml"
    path.write_text(dump_run_config(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with (
        open(cfg.data_dir / "stdout.json", "wb") as out,
        open(cfg.data_dir / "node.log", "wb") as log,
    ):
        return subprocess.Popen(
            [sys.executable, "-m", "shoal.cli.main", "train", "--config", str(path), "--json",
             "--health-listen", "127.0.0.1:0"],
            stdout=out, stderr=log, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip


def _gauges(addr: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:  # loopback only
        text = r.read().decode()
    return {k: float(v) for k, v in (ln.split() for ln in text.splitlines() if ln and ln[0] != "#")}


def test_shoal_train_with_privacy_reports_both_epsilons(
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    cfgs = [_config(tmp_path, 0, [])]
    procs.append(_start(cfgs[0]))
    boot = wait_contact(cfgs[0].data_dir, procs[0])
    cfgs.append(_config(tmp_path, 1, [boot]))
    procs.append(_start(cfgs[1]))
    scraped: list[dict[str, float]] = []
    deadline = time.monotonic() + 400
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        addr = read_health_addr(cfgs[1].data_dir)
        if addr is not None:
            with contextlib.suppress(OSError):  # not up yet, or just closed
                scraped.append(_gauges(addr))
        time.sleep(0.3)
    for c, p in zip(cfgs, procs, strict=True):
        assert p.wait(timeout=30) == 0, (c.data_dir / "node.log").read_text()[-3000:]
    results = [json.loads((c.data_dir / "stdout.json").read_text()) for c in cfgs]

    ref = RDPAccountant()
    for _ in range(ROUNDS):
        ref.step(noise_multiplier=SIGMA, sample_rate=1.0)
    for r in results:
        priv = r["privacy"]
        assert r["rounds"] == ROUNDS
        assert priv["releases"] == ROUNDS and priv["delta"] == DELTA
        assert priv["epsilon"] == pytest.approx(ref.get_epsilon(DELTA), rel=1e-12)
        assert [h["epsilon"] for h in r["history"]][-1] == priv["epsilon"]
        sgd = priv["dp_sgd"]
        assert sgd["steps"] == r["local_steps"] >= ROUNDS
        sgd_ref = RDPAccountant()
        for _ in range(sgd["steps"]):
            sgd_ref.step(noise_multiplier=SGD_SIGMA, sample_rate=sgd["sample_rate"])
        assert sgd["epsilon"] == pytest.approx(sgd_ref.get_epsilon(DELTA), rel=1e-12)
        assert (sgd["noise_multiplier"], sgd["max_grad_norm"]) == (SGD_SIGMA, SGD_CLIP)
    by_round = [[h["model_hash"] for h in r["history"]] for r in results]
    assert by_round[0] == by_round[1]  # DP noise on each peer, identical models
    # /metrics exported the epsilon while training, growing as rounds went by
    eps = [g["shoal_dp_epsilon"] for g in scraped if "shoal_dp_epsilon" in g]
    assert eps and eps[0] <= eps[-1] and eps[-1] > 0
    assert all(g["shoal_dp_delta"] == DELTA for g in scraped if "shoal_dp_delta" in g)
    assert any(g.get("shoal_dp_sgd_epsilon", 0) > 0 for g in scraped)
