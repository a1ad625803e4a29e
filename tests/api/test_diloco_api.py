"""The Python API as a user would use it: two peers in one process, own torch model."""

import threading
from pathlib import Path

import pytest
import torch

import shoal
from shoal.diloco import DiLoCo
from shoal.training.checkpoint import CheckpointError, load_checkpoint
from tests.tiny_models import Regression


def _train(
    opt: DiLoCo, model: Regression, seed: int, steps: int, errors: list[BaseException]
) -> None:
    try:
        g = torch.Generator().manual_seed(seed)
        w = torch.arange(8, dtype=torch.float32).reshape(8, 1)
        for _ in range(steps):
            x = torch.randn(16, 8, generator=g)
            loss = model(x, x @ w)
            opt.zero_grad()
            loss.backward()
            opt.step(samples=16)
    except BaseException as exc:
        errors.append(exc)


@pytest.mark.slow
def test_two_peers_in_one_process_end_rounds_identical(tmp_path: Path) -> None:
    a = shoal.start_node(tmp_path / "a", run="api", target_samples=2 * 10 * 16, deadline_s=20)
    try:
        boot = str(a.node.contact)  # type: ignore[union-attr]
        b = shoal.start_node(
            tmp_path / "b", run="api", target_samples=2 * 10 * 16, deadline_s=20, bootstrap=[boot]
        )
        try:
            ma, mb = Regression(), Regression()
            oa = shoal.DiLoCo(ma, torch.optim.SGD(ma.parameters(), lr=0.01), run="api", node=a,
                              inner_steps=10, compression="none", join_existing=False)  # fmt: skip
            ob = shoal.DiLoCo(mb, torch.optim.SGD(mb.parameters(), lr=0.01), run="api", node=b,
                              inner_steps=10, compression="none", join_existing=False)  # fmt: skip
            errors: list[BaseException] = []
            ts = [
                threading.Thread(target=_train, args=(oa, ma, 1, 30, errors)),
                threading.Thread(target=_train, args=(ob, mb, 2, 30, errors)),
            ]
            for t in ts:
                t.start()
            for t in ts:
                t.join(120)
            assert not errors, errors
            assert [h.round for h in oa.history] == [1, 2, 3]
            assert [h.model_hash for h in oa.history] == [h.model_hash for h in ob.history]
            assert all(h.group_size == 2 for h in oa.history)
            # the two peers saw different data, yet hold bit-identical params
            assert torch.equal(oa.global_flat, ob.global_flat)

            path = tmp_path / "ckpt.safetensors"
            h = oa.save_checkpoint(path)
            assert h == oa.history[-1].model_hash
            ck = load_checkpoint(path, expected_model_hash=h)
            assert ck.round == 3
            raw = bytearray(path.read_bytes())
            raw[-5] ^= 0xFF
            path.write_bytes(bytes(raw))
            with pytest.raises(CheckpointError):
                load_checkpoint(path)

            # the model to use: the outer (Nesterov) iterate, the same on both peers
            ra, rb = oa.readout(), ob.readout()
            assert list(ra) == [n for n, _ in ma.named_parameters()]
            assert all(torch.equal(ra[k], rb[k]) for k in ra)
            flat = torch.cat([t.reshape(-1) for t in ra.values()])
            assert oa.outer.momentum_buffer is not None
            assert not torch.equal(flat, oa.global_flat)  # not the look-ahead params
            assert torch.allclose(flat, oa.global_flat + 0.7 * 0.9 * oa.outer.momentum_buffer)
            mh = oa.save_model(tmp_path / "model.safetensors")
            assert mh == ob.save_model(tmp_path / "model_b.safetensors") != h
            saved = load_checkpoint(tmp_path / "model.safetensors", expected_model_hash=mh)
            assert saved.momentum is None
            assert torch.equal(saved.params["lin.weight"], ra["lin.weight"])

            state = oa.state_dict()
            oa.global_flat.zero_()
            oa.load_state_dict(state)
            assert torch.equal(oa.global_flat, ob.global_flat)
        finally:
            b.stop()
    finally:
        a.stop()


def test_inner_steps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="inner_steps"):
        DiLoCo(Regression(), torch.optim.SGD(Regression().parameters(), lr=0.1), run="x",
               node=None, inner_steps=0)  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.slow
def test_robust_aggregator_chosen_per_run_keeps_peers_identical(tmp_path: Path) -> None:
    a = shoal.start_node(tmp_path / "a", run="med", target_samples=2 * 5 * 16, deadline_s=20)
    try:
        boot = str(a.node.contact)  # type: ignore[union-attr]
        b = shoal.start_node(
            tmp_path / "b", run="med", target_samples=2 * 5 * 16, deadline_s=20, bootstrap=[boot]
        )
        try:
            ma, mb = Regression(), Regression()
            opts = [
                shoal.DiLoCo(
                    m,
                    torch.optim.SGD(m.parameters(), lr=0.01),
                    run="med",
                    node=n,
                    inner_steps=5,
                    compression="int8",
                    join_existing=False,
                    aggregator="median",
                )
                for m, n in ((ma, a), (mb, b))
            ]
            assert all(o._averager.aggregator is not None for o in opts)
            errors: list[BaseException] = []
            ts = [
                threading.Thread(target=_train, args=(o, m, s, 10, errors))
                for o, m, s in ((opts[0], ma, 1), (opts[1], mb, 2))
            ]
            for t in ts:
                t.start()
            for t in ts:
                t.join(120)
            assert not errors, errors
            assert [h.round for h in opts[0].history] == [1, 2]
            assert [h.model_hash for h in opts[0].history] == [
                h.model_hash for h in opts[1].history
            ]
        finally:
            b.stop()
    finally:
        a.stop()
