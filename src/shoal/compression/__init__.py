"""Pseudo-gradient codecs: what a peer sends instead of raw fp32 (DESIGN.md "Training").

`codec.py` holds the interface and errors, `fp32.py` / `int8.py` the codecs, and
`error_feedback.py` the wrapper that carries each round's quantisation error forward.
"""

from shoal.compression.codec import (
    Codec,
    CompressionError,
    EncodedTensor,
    MalformedEncodingError,
    NonFiniteTensorError,
    get_codec,
)
from shoal.compression.error_feedback import ErrorFeedback

__all__ = [
    "Codec",
    "CompressionError",
    "EncodedTensor",
    "ErrorFeedback",
    "MalformedEncodingError",
    "NonFiniteTensorError",
    "get_codec",
]
