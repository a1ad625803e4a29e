"""DP: clipping, the noise actually added, and epsilon agreeing with Opacus."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import RDPAccountant
from scipy import stats

from shoal.privacy import (
    DpPseudoGradients,
    PrivacyBudget,
    clip_and_noise,
    clip_to_norm,
    closed_form_epsilon,
    gaussian_noise,
)
from shoal.privacy.dp_sgd import inner_epsilon, make_private_inner


def test_clipping() -> None:
    x = torch.full((100,), 1.0)  # norm 10
    c, norm = clip_to_norm(x, 2.0)
    assert norm == pytest.approx(10.0)
    assert float(c.norm()) == pytest.approx(2.0, rel=1e-4)
    small, _ = clip_to_norm(x * 0.01, 2.0)
    assert torch.equal(small, x * 0.01)


@pytest.mark.parametrize("n", [3, 1000, 1_000_003])
def test_clipped_norm_never_exceeds_the_bound(n: int) -> None:
    """The sensitivity epsilon assumes: checked in fp64, for fp32 norm and scaling."""
    g = torch.Generator().manual_seed(n)
    for scale in (1e-3, 1.0, 1e3, 1e18, 1e25):  # 1e25: fp32 squares overflow
        x = torch.randn(n, generator=g) * scale
        for clip in (1e-3, 0.7, 50.0):
            c, norm = clip_to_norm(x, clip)
            assert float(torch.linalg.vector_norm(c.double())) <= clip
            assert norm == pytest.approx(float(torch.linalg.vector_norm(x.double())), rel=1e-5)
            out, norm2 = clip_and_noise(x, clip, 0.0, g)  # no noise: just the clipped update
            assert norm2 == norm and float(torch.linalg.vector_norm(out.double())) <= clip


@pytest.mark.parametrize(("sigma", "clip"), [(0.5, 1.0), (1.1, 2.0), (4.0, 0.25)])
def test_noise_scale_is_what_is_accounted_for(sigma: float, clip: float) -> None:
    k = 200_000
    update = torch.full((k,), 5.0)  # clipped to norm `clip`
    out = gaussian_noise(update, clip, sigma, torch.Generator().manual_seed(7))
    clipped, _ = clip_to_norm(update, clip)
    noise = (out.double() - clipped.double()).numpy()
    want = sigma * clip
    # sample std of 200k normals: relative standard error ~ 1/sqrt(2k) = 0.16%
    assert noise.std() == pytest.approx(want, rel=0.01)
    assert abs(noise.mean()) < 5 * want / math.sqrt(k)
    assert stats.kstest(noise / want, "norm").pvalue > 1e-3


def test_accounting_matches_opacus_and_closed_form() -> None:
    sigma, rounds, delta = 1.1, 50, 1e-5
    dp = DpPseudoGradients(1.0, sigma, delta, generator=torch.Generator().manual_seed(0))
    for _ in range(rounds):
        dp.privatize(torch.randn(10))
    ref = RDPAccountant()
    for _ in range(rounds):
        ref.step(noise_multiplier=sigma, sample_rate=1.0)
    assert dp.epsilon_spent() == pytest.approx(ref.get_epsilon(delta), rel=1e-12)
    assert dp.epsilon_spent() == pytest.approx(closed_form_epsilon(sigma, rounds, delta), rel=1e-9)
    # More rounds cost more; more noise costs less.
    assert closed_form_epsilon(sigma, 2 * rounds, delta) > dp.epsilon_spent()
    assert closed_form_epsilon(2 * sigma, rounds, delta) < dp.epsilon_spent()


def test_subsampled_steps_match_opacus() -> None:
    b = PrivacyBudget(1e-6)
    b.spend(0.9, sample_rate=0.01, steps=300)
    b.spend(1.5, sample_rate=1.0, steps=5)
    ref = RDPAccountant()
    for _ in range(300):
        ref.step(noise_multiplier=0.9, sample_rate=0.01)
    for _ in range(5):
        ref.step(noise_multiplier=1.5, sample_rate=1.0)
    assert b.epsilon() == pytest.approx(ref.get_epsilon(1e-6), rel=1e-12)
    assert b.releases == 305


def test_dp_sgd_inner_loop_through_opacus() -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = (x[:, 0] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    m, o, dl, engine = make_private_inner(
        model, opt, loader, noise_multiplier=1.0, max_grad_norm=1.0, seed=1
    )
    steps = 0
    for _ in range(3):
        for xb, yb in dl:
            if len(xb) == 0:
                continue
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(xb), yb).backward()  # type: ignore[no-untyped-call]
            o.step()
            steps += 1
    eps = inner_epsilon(engine, 1e-5)
    ref = RDPAccountant()
    assert engine.accountant.history == [(1.0, 64 / 512, steps)]
    for _ in range(steps):
        ref.step(noise_multiplier=1.0, sample_rate=64 / 512)
    assert eps == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    assert 0 < eps < 50
    with torch.no_grad():
        acc = float((m(x).argmax(1) == y).float().mean())
    assert acc > 0.7  # it still learns under DP noise


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        clip_to_norm(torch.ones(3), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        clip_to_norm(torch.tensor([float("nan")]), 1.0)
    with pytest.raises(ValueError):
        gaussian_noise(torch.ones(3), 1.0, -1.0, torch.Generator())
    with pytest.raises(ValueError):
        PrivacyBudget(0.0)
    with pytest.raises(ValueError):
        PrivacyBudget(1e-5).spend(0.0)
    with pytest.raises(ValueError):
        DpPseudoGradients(1.0, 0.0)
    assert PrivacyBudget(1e-5).epsilon() == 0.0
