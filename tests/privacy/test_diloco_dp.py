"""DP switched on per run through ``shoal.DiLoCo(dp=DpSettings(...))``: real nodes in one
process (as tests/api), on the plain all-reduce and on the SecAgg path.

What leaves a peer is read where the ledger hook sees it (``commit_update`` gets the
exact bytes the group averages). With an inner lr of 0 the raw pseudo-gradient is
exactly 0, so what is sent is the noise alone (after clipping, error feedback and
int8), and its spread can be compared with the configured std.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from scipy import stats

import shoal
from shoal.diloco import DiLoCo
from shoal.privacy import DpSettings, closed_form_epsilon
from shoal.runtime.background import NodeThread
from shoal.wire.contact import Contact
from tests.peer_threads import run_peers

pytestmark = pytest.mark.slow

BATCH = 16


class Regression(torch.nn.Module):
    def __init__(self, n_in: int = 8, n_out: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self.lin(x), y)


class SentDeltas:
    """A RoundLedger that only records what this peer released each round."""

    def __init__(self) -> None:
        self.sent: dict[int, np.ndarray] = {}

    def commit_update(self, round_no: int, delta: bytes, samples: int) -> None:
        self.sent[round_no] = np.frombuffer(delta, dtype="<f4").astype(np.float64)

    def anchor_round(self, round_no: int, model_hash: str, members: Sequence[Contact]) -> None:
        return None


@contextmanager
def nodes(tmp_path: Path, run: str, n: int, target: int) -> Iterator[list[NodeThread]]:
    with ExitStack() as stack:
        first = shoal.start_node(tmp_path / "n0", run=run, target_samples=target, deadline_s=20)
        stack.callback(first.stop)
        boot = str(first.node.contact)
        out = [first]
        for i in range(1, n):
            t = shoal.start_node(
                tmp_path / f"n{i}", run=run, target_samples=target, deadline_s=20, bootstrap=[boot]
            )
            stack.callback(t.stop)
            out.append(t)
        yield out


def _train(opts: list[DiLoCo], models: list[Regression], steps: int) -> None:
    def one(i: int) -> None:
        g = torch.Generator().manual_seed(100 + i)
        m, n_in = models[i], models[i].lin.in_features
        w = torch.linspace(-1, 1, n_in * m.lin.out_features).reshape(n_in, -1)
        for _ in range(steps):
            x = torch.randn(BATCH, n_in, generator=g)
            loss = m(x, x @ w)
            opts[i].zero_grad()
            loss.backward()
            opts[i].step(samples=BATCH)

    run_peers(len(opts), one, timeout_s=180)


def _opacus_epsilon(sigma: float, releases: int, delta: float) -> float:
    acc = RDPAccountant()
    for _ in range(releases):
        acc.step(noise_multiplier=sigma, sample_rate=1.0)
    return float(acc.get_epsilon(delta))


def test_three_peers_report_opacus_epsilon_and_stay_identical(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    peers, rounds, h = 3, 3, 5
    dp = DpSettings(clip_norm=0.05, noise_multiplier=0.9, delta=1e-6)
    with nodes(tmp_path, "dp3", peers, peers * h * BATCH) as ns:
        models = [Regression() for _ in range(peers)]
        opts = [
            shoal.DiLoCo(m, torch.optim.SGD(m.parameters(), lr=0.02), run="dp3", node=n,
                         inner_steps=h, compression="int8", join_existing=False, dp=dp)
            for m, n in zip(models, ns, strict=True)
        ]  # fmt: skip
        _train(opts, models, rounds * h)
        for o in opts:
            assert [r.round for r in o.history] == [1, 2, 3]
            assert all(r.group_size == peers for r in o.history)
            assert o.dp is not None and o.dp.releases == rounds
            for r in o.history:  # what the peer reports = Opacus's RDP accountant
                assert r.epsilon == pytest.approx(_opacus_epsilon(0.9, r.round, 1e-6), rel=1e-12)
                assert r.epsilon == pytest.approx(closed_form_epsilon(0.9, r.round, 1e-6), rel=1e-9)
            assert o.epsilon == o.history[-1].epsilon
            assert 0 < o.history[0].epsilon < o.history[1].epsilon < o.history[2].epsilon
        # each peer noised its own update, yet the group holds bit-identical params
        assert len({tuple(r.model_hash for r in o.history) for o in opts}) == 1
        assert all(torch.equal(opts[0].global_flat, o.global_flat) for o in opts[1:])
        # and the raw updates were clipped: each was longer than clip_norm
        assert all(o.dp is not None and (o.dp.last_norm or 0) > 0.05 for o in opts)


def _check_is_noise(x: np.ndarray, std: float, quantised: bool = False) -> None:
    # ~100k normals: the sample std's relative standard error is ~0.2%
    assert x.std() == pytest.approx(std, rel=0.015)
    assert abs(x.mean()) < 5 * std / math.sqrt(x.size)
    ks = stats.kstest(x / std, "norm")
    if quantised:
        # int8 steps (~0.03 std) put a small mass on each code, so a KS p-value means
        # nothing; its statistic still tells a normal from a uniform (~0.06) or a
        # Laplace (~0.04) of the same std
        assert ks.statistic < 0.015
    else:
        assert ks.pvalue > 1e-4


def test_noise_applied_matches_the_configured_std_and_error_feedback_keeps_it(
    tmp_path: Path,
) -> None:
    """Plain all-reduce, int8 with error feedback: each round's released update is
    N(0, (z C)^2) noise; summed over rounds the noise grows like sqrt(rounds), so error
    feedback (which comes after the noise) did not subtract it back out."""
    torch.set_num_threads(1)
    peers, rounds, h = 2, 3, 2
    dp = DpSettings(clip_norm=2.0, noise_multiplier=0.25)  # std 0.5
    with nodes(tmp_path, "dpn", peers, peers * h * BATCH) as ns:
        models = [Regression(400, 250) for _ in range(peers)]  # 100,250 params
        hooks = [SentDeltas() for _ in range(peers)]
        opts = [
            shoal.DiLoCo(m, torch.optim.SGD(m.parameters(), lr=0.0), run="dpn", node=n,
                         inner_steps=h, compression="int8", join_existing=False, dp=dp,
                         ledger=k, outer_lr=1.0, outer_momentum=0.0)
            for m, n, k in zip(models, ns, hooks, strict=True)
        ]  # fmt: skip
        _train(opts, models, rounds * h)
        assert len({o.history[-1].model_hash for o in opts}) == 1
    for k in hooks:
        assert sorted(k.sent) == [0, 1, 2]
        for d in k.sent.values():
            _check_is_noise(d, dp.noise_std, quantised=True)
        total = np.stack(list(k.sent.values())).sum(axis=0)
        _check_is_noise(total, dp.noise_std * math.sqrt(rounds), quantised=True)
    # two peers' noise is independent (OS-seeded generators, not the run's seed)
    assert abs(np.corrcoef(hooks[0].sent[0], hooks[1].sent[0])[0, 1]) < 0.02


def test_secure_aggregation_averages_the_noised_updates(tmp_path: Path) -> None:
    """SecAgg path: the group only sees the sum, and it is the sum of the noised
    updates (the noise went in before masking); epsilon is reported as on the plain
    path and both peers end identical."""
    torch.set_num_threads(1)
    peers, h = 2, 2
    dp = DpSettings(clip_norm=1.0, noise_multiplier=0.5, delta=1e-5)  # std 0.5
    with nodes(tmp_path, "dps", peers, peers * h * BATCH) as ns:
        models = [Regression(400, 250) for _ in range(peers)]
        start = torch.cat([p.detach().reshape(-1) for p in models[0].parameters()]).clone()
        hooks = [SentDeltas() for _ in range(peers)]
        opts = [
            shoal.DiLoCo(m, torch.optim.SGD(m.parameters(), lr=0.0), run="dps", node=n,
                         inner_steps=h, compression="none", join_existing=False, dp=dp,
                         ledger=k, outer_lr=1.0, outer_momentum=0.0, secure_aggregation=True)
            for m, n, k in zip(models, ns, hooks, strict=True)
        ]  # fmt: skip
        _train(opts, models, h)
        assert all(o._averager.secure_aggregation for o in opts)
        assert opts[0].history[0].model_hash == opts[1].history[0].model_hash
        assert torch.equal(opts[0].global_flat, opts[1].global_flat)
        moved = (start - opts[0].global_flat).double().numpy()
        assert [o.history[0].epsilon for o in opts] == [_opacus_epsilon(0.5, 1, 1e-5)] * 2
    mean_sent = (hooks[0].sent[0] + hooks[1].sent[0]) / 2
    # equal samples: the secure average is the plain mean, up to SecAgg's fixed point
    assert np.abs(moved - mean_sent).max() < 1e-5
    _check_is_noise(moved, dp.noise_std / math.sqrt(peers))


def test_overlap_reports_epsilon_of_every_released_update(tmp_path: Path) -> None:
    """With overlap, round c's outer step is applied after c+1's update was released:
    the epsilon logged with it counts that release too (what has left the peer)."""
    torch.set_num_threads(1)
    peers, rounds, h = 2, 3, 5
    dp = DpSettings(clip_norm=0.05, noise_multiplier=1.5)
    errors: list[BaseException] = []

    def loop(opt: DiLoCo, m: Regression, seed: int) -> None:
        try:
            g = torch.Generator().manual_seed(seed)
            w = torch.arange(8, dtype=torch.float32).reshape(8, 1)
            while opt.round < rounds:
                x = torch.randn(BATCH, 8, generator=g)
                loss = m(x, x @ w)
                opt.zero_grad()
                loss.backward()
                time.sleep(0.005)
                opt.step(samples=BATCH)
                if opt.pending_round == rounds - 1:  # the runner's loop
                    opt.flush()
        except BaseException as exc:
            errors.append(exc)

    with nodes(tmp_path, "dpo", peers, peers * h * BATCH) as ns:
        models = [Regression() for _ in range(peers)]
        opts = [
            shoal.DiLoCo(m, torch.optim.SGD(m.parameters(), lr=0.02), run="dpo", node=n,
                         inner_steps=h, compression="int8", join_existing=False, dp=dp,
                         overlap=True)
            for m, n in zip(models, ns, strict=True)
        ]  # fmt: skip
        ts = [threading.Thread(target=loop, args=(o, m, i)) for i, (o, m) in
              enumerate(zip(opts, models, strict=True))]  # fmt: skip
        for t in ts:
            t.start()
        for t in ts:
            t.join(180)
        assert not errors, errors
    want = [_opacus_epsilon(1.5, k, 1e-5) for k in (2, 3, 3)]  # released: r+1, r+1, last
    for o in opts:
        assert [r.round for r in o.history] == [1, 2, 3]
        assert [r.epsilon for r in o.history] == pytest.approx(want, rel=1e-12)
        assert o.dp is not None and o.dp.releases == rounds
    assert len({tuple(r.model_hash for r in o.history) for o in opts}) == 1
