"""Each attacker behaviour forges what it says it forges."""

from __future__ import annotations

import pytest
import torch

from shoal.attacks.behaviours import ATTACKS, AttackContext, alie_default_z, make_behaviour


def _ctx(rnd: int = 3, history: list[torch.Tensor] | None = None) -> AttackContext:
    g = torch.Generator().manual_seed(1)
    honest = torch.randn(100, generator=g)
    colluders = [honest, torch.randn(100, generator=g), torch.randn(100, generator=g)]
    return AttackContext(
        honest=honest, weight=32.0, round_no=rnd, colluders=colluders, group_size=10,
        attackers=3, generator=torch.Generator().manual_seed(2), history=history or [],
    )  # fmt: skip


def test_sign_flip_scale_free_rider_wrong_version() -> None:
    c = _ctx()
    assert torch.equal(make_behaviour("sign_flip")(c).update, -c.honest)
    assert torch.equal(make_behaviour("scale")(c).update, c.honest * 100)
    fr = make_behaviour("free_rider", {"claim": 5})(c)
    assert float(fr.update.abs().sum()) == 0 and fr.weight == 5 * 32.0
    assert make_behaviour("wrong_version")(c).version == 2
    assert make_behaviour("wrong_version")(_ctx(rnd=0)).version == 1
    assert make_behaviour("none")(c).version == 3


def test_gaussian_noise_scale() -> None:
    c = _ctx()
    u = make_behaviour("gaussian", {"sigma": 10})(c).update
    rms = float(torch.sqrt((c.honest**2).mean()))
    assert 5 * rms < float(u.std()) < 15 * rms


def test_alie_shifts_by_z_std() -> None:
    c = _ctx()
    xs = torch.stack([x.double() for x in c.colluders])
    u = make_behaviour("alie", {"z": 2})(c).update
    expected = xs.mean(0) - 2 * xs.std(0, correction=0)
    assert torch.allclose(u.double(), expected, atol=1e-5)
    assert alie_default_z(10, 3) == pytest.approx(0.5244, abs=1e-3)  # Phi^-1(0.7)


def test_replay_resends_an_old_update() -> None:
    old = [torch.ones(100), torch.full((100,), 2.0), torch.full((100,), 3.0)]
    c = _ctx(history=old)
    assert torch.equal(make_behaviour("replay")(c).update, old[0])
    assert torch.equal(make_behaviour("replay", {"lag": 2})(c).update, old[1])
    first = _ctx()
    assert torch.equal(make_behaviour("replay")(first).update, first.honest)


def test_bad_names_and_params() -> None:
    assert "alie" in ATTACKS
    with pytest.raises(ValueError, match="unknown attack"):
        make_behaviour("nope")
    with pytest.raises(ValueError, match="no parameter"):
        make_behaviour("scale", {"z": 1})
    with pytest.raises(ValueError, match="finite"):
        make_behaviour("scale", {"factor": float("nan")})
    with pytest.raises(ValueError):
        make_behaviour("wrong_version", {"offset": 0})
