"""Verify each distinct signature once per simulator process.

In the simulator thousands of peers live in one process, and every one of them checks
the same signed DHT records (a progress record is read by every peer that polls its
shard). A real node checks a record once and keeps it; here the same bytes would be
checked once per reading peer, which made Ed25519 the largest single cost of a
1000-node run.

Ed25519 verification is a pure function of (public key, signature, message), so a
memo keyed on exactly those bytes returns exactly what the check would: forged or
altered records still fail (their bytes differ from any valid ones, and a failure is
memoised as a failure). The cache is bounded (least recently used entries go first)
and only installed for the duration of a ``with`` block.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import shoal.identity.keys as keys_mod
from shoal.identity.keys import PeerId

# A progress record is re-published every few seconds and read within a poll interval
# of being published, so recent records are what hit. 2^18 entries of ~250 bytes each
# (key tuple of public key, signature and signed bytes) stay well under 100 MiB.
MAX_CACHED_SIGNATURES = 1 << 18

Verify = Callable[[PeerId, bytes, bytes], bool]


class _Stats:
    __slots__ = ("calls", "checks")

    def __init__(self) -> None:
        self.calls = 0
        self.checks = 0


@contextmanager
def cached_signature_checks(max_entries: int = MAX_CACHED_SIGNATURES) -> Iterator[_Stats]:
    """Within the block, ``PeerId.verify`` answers repeated identical checks from a
    memo. Yields counters: ``calls`` (checks asked for) and ``checks`` (real ones)."""
    if max_entries < 1:
        raise ValueError("max_entries must be >= 1")
    original: Verify = keys_mod.verify
    stats = _Stats()

    @functools.lru_cache(maxsize=max_entries)
    def check(raw: bytes, signature: bytes, data: bytes) -> bool:
        stats.checks += 1
        return original(PeerId(raw), signature, data)

    def verify(peer_id: PeerId, signature: bytes, data: bytes) -> bool:
        stats.calls += 1
        return check(peer_id.raw, signature, data)

    # PeerId.verify looks ``verify`` up in its module at call time, so replacing the
    # module attribute reroutes every record check without touching the identity code.
    setattr(keys_mod, "verify", verify)  # noqa: B010 (mypy refuses assigning to a def)
    try:
        yield stats
    finally:
        setattr(keys_mod, "verify", original)  # noqa: B010
        check.cache_clear()


__all__ = ["MAX_CACHED_SIGNATURES", "cached_signature_checks"]
