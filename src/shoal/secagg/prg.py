"""Key agreement and mask expansion.

Pairwise seed: HKDF-SHA256 over the X25519 shared secret of the two peers' masking
keys, bound to the session. Masks: AES-256-CTR keystream under a 32-byte seed, read as
little-endian uint32 ring elements. Both peers of a pair derive the same mask, so
one adds it and the other subtracts it, and the pair's masks cancel in the sum.
"""

from __future__ import annotations

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def derive(shared: bytes, session: bytes, label: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=session, info=b"shoal-secagg-v1/" + label).derive(shared)


def agree(private: X25519PrivateKey, public: bytes, session: bytes, label: bytes) -> bytes:
    return derive(private.exchange(X25519PublicKey.from_public_bytes(public)), session, label)


def mask_u32(seed: bytes, numel: int) -> np.ndarray:
    """``numel`` pseudo-random ring elements as uint32 (read-only). uint32 arithmetic
    wraps modulo 2^32, which is exactly the ring, so sums need no reduction."""
    if len(seed) != 32:
        raise ValueError("mask seed must be 32 bytes")
    enc = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
    stream = enc.update(bytes(4 * numel)) + enc.finalize()
    return np.frombuffer(stream, dtype="<u4")


def mask(seed: bytes, numel: int) -> torch.Tensor:
    """``numel`` pseudo-random ring elements (int64 in [0, 2^32)) from a 32-byte seed."""
    return torch.from_numpy(mask_u32(seed, numel).astype(np.int64))
