"""The simulator's signature memo answers exactly what the real check would."""

from __future__ import annotations

import pytest

import shoal.identity.keys as keys_mod
from shoal.dht.records import BadRecordSignature, SignedRecord, key_for
from shoal.identity import Identity
from shoal.sim.verify_cache import cached_signature_checks


def _record(ident: Identity, value: bytes = b"v", seq: int = 1) -> SignedRecord:
    return SignedRecord.create(ident, key_for("k"), value, seq, 100.0)


def test_repeated_checks_run_once_and_give_the_same_answer() -> None:
    ident = Identity.from_seed(b"\x01" * 32)
    rec = _record(ident)
    with cached_signature_checks() as stats:
        for _ in range(5):
            rec.validate(0.0)
        assert stats.calls == 5
        assert stats.checks == 1
        _record(ident, seq=2).validate(0.0)  # other bytes: a real check
        assert stats.checks == 2


def test_forged_records_still_fail_and_failures_are_memoised_as_failures() -> None:
    ident = Identity.from_seed(b"\x02" * 32)
    other = Identity.from_seed(b"\x03" * 32)
    rec = _record(ident)
    altered = SignedRecord(rec.key, b"w", rec.publisher, rec.seq, rec.expires_at, rec.signature)
    stolen = SignedRecord(rec.key, rec.value, other.peer_id, rec.seq, rec.expires_at, rec.signature)
    with cached_signature_checks() as stats:
        rec.validate(0.0)  # the valid one is cached first...
        for bad in (altered, stolen, altered, stolen):
            with pytest.raises(BadRecordSignature):
                bad.validate(0.0)  # ...and does not make look-alikes pass
        assert stats.checks == 3
        rec.validate(0.0)


def test_the_real_check_is_back_after_the_block_even_on_error() -> None:
    original = keys_mod.verify
    with pytest.raises(RuntimeError), cached_signature_checks():
        assert keys_mod.verify is not original
        raise RuntimeError("boom")
    assert keys_mod.verify is original


def test_a_tiny_cache_evicts_but_stays_correct() -> None:
    ident = Identity.from_seed(b"\x04" * 32)
    recs = [_record(ident, seq=i) for i in range(1, 4)]
    with cached_signature_checks(max_entries=1) as stats:
        for r in recs + recs:
            r.validate(0.0)
        assert stats.checks == 6  # each one evicted the one before


def test_rejects_an_empty_cache() -> None:
    with pytest.raises(ValueError), cached_signature_checks(max_entries=0):
        pass
