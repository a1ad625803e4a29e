import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.training.diloco_math import (
    NonFiniteUpdateError,
    OuterOptimizer,
    UpdateRejected,
    WrongShapeError,
    WrongVersionError,
    flatten_params,
    model_hash,
    pseudo_gradient,
    unflatten_into,
    validate_update,
    weighted_average,
)


def test_flatten_and_unflatten_round_trip() -> None:
    params = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 1, 2, dtype=torch.float64)]
    flat = flatten_params(params)
    assert flat.shape == (21,) and flat.dtype == torch.float32
    assert torch.equal(flat[12:17], params[1])
    targets = [torch.zeros_like(p) for p in params]
    unflatten_into(flat, targets)
    for p, t in zip(params, targets, strict=True):
        assert torch.allclose(p, t)
    with pytest.raises(WrongShapeError):
        unflatten_into(flat[:-1], targets)


def test_pseudo_gradient_is_global_minus_local() -> None:
    g, local = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 3.0])
    assert torch.equal(pseudo_gradient(g, local), torch.tensor([0.5, -1.0]))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31), st.lists(st.integers(0, 10_000), min_size=1, max_size=6))
def test_weighted_average_matches_manual_float64(seed: int, samples: list[int]) -> None:
    if sum(samples) == 0:
        samples[0] = 1
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(257, generator=gen) for _ in samples]
    got = weighted_average(list(zip(xs, samples, strict=True)))
    manual = sum(x.double() * n for x, n in zip(xs, samples, strict=True)) / sum(samples)
    assert isinstance(manual, torch.Tensor)
    assert torch.allclose(got.double(), manual, rtol=1e-5, atol=1e-6)


def test_weighted_average_weights_by_samples() -> None:
    avg = weighted_average([(torch.tensor([0.0]), 1), (torch.tensor([4.0]), 3)])
    assert avg.item() == 3.0
    assert weighted_average([(torch.tensor([5.0]), 0), (torch.tensor([1.0]), 2)]).item() == 1.0


def test_weighted_average_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        weighted_average([])
    with pytest.raises(ValueError):
        weighted_average([(torch.ones(2), 0)])
    with pytest.raises(ValueError):
        weighted_average([(torch.ones(2), -1)])
    with pytest.raises(WrongShapeError):
        weighted_average([(torch.ones(2), 1), (torch.ones(3), 1)])


def test_weighted_average_is_bit_deterministic() -> None:
    gen = torch.Generator().manual_seed(1)
    contribs = [(torch.randn(10_001, generator=gen), n) for n in (7, 300, 12)]
    a = weighted_average(contribs)
    b = weighted_average([(x.clone(), n) for x, n in contribs])
    assert model_hash(a) == model_hash(b)


def test_validate_update_accepts_good_and_rejects_each_bad_case() -> None:
    good = torch.randn(10)
    validate_update(good, 10, model_version=3, update_version=3)
    nan, inf = good.clone(), good.clone()
    nan[4], inf[9] = float("nan"), float("-inf")
    cases: list[tuple[torch.Tensor, int, int, type[UpdateRejected]]] = [
        (torch.randn(11), 3, 3, WrongShapeError),
        (torch.randn(2, 5), 3, 3, WrongShapeError),
        (good.double(), 3, 3, WrongShapeError),
        (nan, 3, 3, NonFiniteUpdateError),
        (inf, 3, 3, NonFiniteUpdateError),
        (good, 3, 2, WrongVersionError),  # stale / replayed
        (good, 3, 4, WrongVersionError),  # from the future
    ]
    for flat, version, update_version, error in cases:
        with pytest.raises(error):
            validate_update(flat, 10, model_version=version, update_version=update_version)
    assert issubclass(UpdateRejected, ValueError)


@pytest.mark.parametrize("nesterov", [True, False])
def test_outer_optimizer_matches_torch_sgd(nesterov: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    ours = torch.randn(1000, generator=gen)
    ref = torch.nn.Parameter(ours.clone())
    sgd = torch.optim.SGD([ref], lr=0.7, momentum=0.9, nesterov=nesterov)
    outer = OuterOptimizer(lr=0.7, momentum=0.9, nesterov=nesterov)
    for _ in range(10):
        g = torch.randn(1000, generator=gen)
        outer.step(ours, g)
        ref.grad = g.clone()
        sgd.step()
    # Not bit-equal: torch's kernels may fuse multiply-adds, ours deliberately do not.
    assert torch.allclose(ours, ref.detach(), rtol=1e-5, atol=1e-5)
    buf = sgd.state[ref]["momentum_buffer"]
    assert outer.momentum_buffer is not None
    assert torch.allclose(outer.momentum_buffer, buf, rtol=1e-5, atol=1e-5)


def test_readout_is_the_heavy_ball_iterate_of_nesterov() -> None:
    """torch's Nesterov params p are the look-ahead x - lr*m*buf of a heavy-ball
    iterate x (x <- x - lr*buf); readout(p) must give x back, step after step."""
    gen = torch.Generator().manual_seed(3)
    p = torch.randn(500, generator=gen)
    x = p.double()  # the heavy-ball recurrence, in float64, from the same start
    outer = OuterOptimizer(lr=0.5, momentum=0.9, nesterov=True)
    assert torch.equal(outer.readout(p), p)  # before any step: no momentum yet
    for _ in range(8):
        g = torch.randn(500, generator=gen)
        outer.step(p, g)
        assert outer.momentum_buffer is not None
        x = x - 0.5 * outer.momentum_buffer.double()
        assert torch.allclose(outer.readout(p).double(), x, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outer.readout(p), p)  # the look-ahead is elsewhere
    before = p.clone()
    outer.readout(p)
    assert torch.equal(p, before)  # reading out changes nothing
    assert torch.equal(outer.readout(p), outer.readout(p.clone()))  # deterministic


def test_readout_without_nesterov_is_the_params_and_checks_shapes() -> None:
    for outer in (OuterOptimizer(momentum=0.9, nesterov=False), OuterOptimizer(momentum=0.0)):
        p = torch.zeros(4)
        outer.step(p, torch.ones(4))
        r = outer.readout(p)
        assert torch.equal(r, p) and r.data_ptr() != p.data_ptr()  # a copy
    outer = OuterOptimizer()
    outer.step(torch.zeros(4), torch.ones(4))
    with pytest.raises(WrongShapeError):
        outer.readout(torch.zeros(5))


def test_outer_optimizer_state_round_trips() -> None:
    a, b = OuterOptimizer(), OuterOptimizer(lr=0.1)
    p = torch.zeros(5)
    a.step(p, torch.ones(5))
    b.load_state_dict(a.state_dict())
    pa, pb = p.clone(), p.clone()
    a.step(pa, torch.ones(5))
    b.step(pb, torch.ones(5))
    assert torch.equal(pa, pb) and b.steps == 2


def test_model_hash_is_canonical() -> None:
    x = torch.arange(6.0)
    assert model_hash(x) == model_hash(x.clone())
    assert model_hash(x) != model_hash(x.reshape(2, 3))  # shape is hashed
    assert model_hash(x) != model_hash(x.double())  # dtype is hashed
    y = x.clone()
    y[5] = torch.nextafter(y[5], torch.tensor(10.0))  # one ulp
    assert model_hash(x) != model_hash(y)
    d1 = {"a": x, "b": torch.ones(2)}
    d2 = {"b": torch.ones(2), "a": x}
    assert model_hash(d1) == model_hash(d2)
    assert model_hash(d1) != model_hash({"a": x, "c": torch.ones(2)})
    assert model_hash(x.reshape(2, 3).t()) == model_hash(x.reshape(2, 3).t().contiguous())
    assert len(model_hash(x)) == 64
