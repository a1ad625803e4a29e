import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.compression import CompressionError, ErrorFeedback, NonFiniteTensorError, get_codec
from shoal.compression.int8 import max_abs_error


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 3000), st.floats(1e-6, 1e3))
def test_sum_of_sent_tracks_sum_of_true_updates(seed: int, n: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    codec = get_codec("int8")
    ef = ErrorFeedback(codec)
    true_sum = torch.zeros(n, dtype=torch.float64)
    sent_sum = torch.zeros(n, dtype=torch.float64)
    residual = torch.zeros(n)
    for _ in range(60):
        update = torch.randn(n, generator=gen) * scale
        corrected_absmax = float((update + residual).abs().max())
        true_sum += update.double()
        sent_sum += codec.decode(ef.encode("w", update)).double()
        new = ef.residual("w")
        assert new is not None
        residual = new.clone()
        # The gap is exactly the residual, which is one round's int8 error at most:
        # it stays bounded however many rounds pass.
        assert torch.allclose(true_sum - sent_sum, residual.double(), rtol=0, atol=1e-4 * scale)
        assert float(residual.abs().max()) <= max_abs_error(corrected_absmax) * (1 + 1e-6)


def test_without_feedback_the_error_grows() -> None:
    # Same stream, no feedback: a small constant bias is rounded away every round.
    codec = get_codec("int8")
    ef = ErrorFeedback(codec)
    update = torch.full((4096,), 0.001)
    update[0] = 1.0  # sets the scale so 0.001 rounds to 0
    plain = sum(codec.decode(codec.encode(update)) for _ in range(100))
    fed = sum(codec.decode(ef.encode("w", update)) for _ in range(100))
    true = update * 100
    assert float((plain - true).abs().max()) > 0.09  # lost all 100 x 0.001
    assert float((fed - true).abs().max()) < 0.01


def test_bad_update_leaves_residual_untouched() -> None:
    ef = ErrorFeedback(get_codec("int8"))
    ef.encode("w", torch.randn(10))
    before = ef.residual("w")
    assert before is not None
    before = before.clone()
    bad = torch.randn(10)
    bad[3] = float("nan")
    with pytest.raises(NonFiniteTensorError):
        ef.encode("w", bad)
    with pytest.raises(CompressionError):
        ef.encode("w", torch.randn(11))
    after = ef.residual("w")
    assert after is not None and torch.equal(after, before)


def test_residual_state_round_trips() -> None:
    ef = ErrorFeedback(get_codec("int8"))
    ef.encode("a", torch.randn(100))
    other = ErrorFeedback(get_codec("int8"))
    other.load_state_dict(ef.state_dict())
    x = torch.randn(100)
    assert bytes(other.encode("a", x).payload) == bytes(ef.encode("a", x).payload)
