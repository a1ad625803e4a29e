"""Builders shared by the ledger tests."""

from __future__ import annotations

from shoal.identity.keys import Identity


def ident(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


def digest(n: int) -> bytes:
    return bytes([n]) * 32
