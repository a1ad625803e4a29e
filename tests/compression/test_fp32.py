import pytest
import torch

from shoal.compression import MalformedEncodingError, NonFiniteTensorError, get_codec


def test_fp32_round_trip_is_exact_and_owns_its_bytes() -> None:
    codec = get_codec("none")
    x = torch.randn(4, 5)
    original = x.clone()
    enc = codec.encode(x)
    x.zero_()  # an in-place update after encoding must not change what is sent
    assert torch.equal(codec.decode(enc), original)
    assert enc.nbytes == 4 * 20


def test_fp32_decode_rejects_bad_length_and_nan() -> None:
    codec = get_codec("none")
    enc = codec.encode(torch.ones(4))
    with pytest.raises(MalformedEncodingError):
        codec.decode(type(enc)("none", (5,), enc.payload))
    nan = torch.tensor([float("nan")]).numpy().tobytes()
    with pytest.raises(NonFiniteTensorError):
        codec.decode(type(enc)("none", (1,), nan))


def test_unknown_codec_named() -> None:
    with pytest.raises(ValueError, match="int3"):
        get_codec("int3")
