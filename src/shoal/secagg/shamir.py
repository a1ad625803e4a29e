"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

A secret is the constant term of a random polynomial of degree t-1; share x is its
value at x = 1..n. Any t shares give the secret back by Lagrange interpolation at 0;
t-1 shares are uniformly distributed whatever the secret, so reveal nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping

PRIME = (1 << 521) - 1  # Mersenne prime, larger than any 32-byte secret
SECRET_BYTES = 32
SHARE_BYTES = 66  # ceil(521 / 8)


class ShamirError(ValueError):
    pass


def split(
    secret: bytes,
    threshold: int,
    xs: list[int],
    randbelow: Callable[[int], int] = secrets.randbelow,
) -> dict[int, bytes]:
    """Shares of ``secret`` at the points ``xs`` (distinct, in 1..PRIME-1)."""
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"secret must be {SECRET_BYTES} bytes")
    if not 1 <= threshold <= len(xs):
        raise ShamirError(f"threshold {threshold} with {len(xs)} shares")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ShamirError("share points must be distinct and non-zero")
    coeffs = [int.from_bytes(secret, "big")] + [randbelow(PRIME) for _ in range(threshold - 1)]
    out = {}
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        out[x] = y.to_bytes(SHARE_BYTES, "big")
    return out


def reconstruct(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (uses the first ``threshold``)."""
    if len(shares) < threshold:
        raise ShamirError(f"need {threshold} shares, have {len(shares)}")
    pts = sorted(shares.items())[:threshold]
    ys = []
    for x, raw in pts:
        if len(raw) != SHARE_BYTES:
            raise ShamirError(f"share of {len(raw)} bytes, expected {SHARE_BYTES}")
        y = int.from_bytes(raw, "big")
        if y >= PRIME or not 0 < x < PRIME:
            raise ShamirError("share out of the field")
        ys.append((x, y))
    secret = 0
    for i, (xi, yi) in enumerate(ys):
        num, den = 1, 1
        for j, (xj, _) in enumerate(ys):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise ShamirError("shares do not interpolate to a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")
