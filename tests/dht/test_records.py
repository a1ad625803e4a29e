import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.dht.records import (
    CLOCK_SKEW_ALLOWANCE_S,
    MAX_RECORD_TTL_S,
    BadRecordSignature,
    RecordError,
    RecordExpired,
    RecordExpiryTooFar,
    RecordStore,
    RecordTooLarge,
    SignedRecord,
    StaleRecord,
    StoreFull,
    key_for,
)
from shoal.identity import Identity
from shoal.wire.limits import MAX_RECORD_VALUE_BYTES

ALICE = Identity.from_seed(b"a" * 32)
BOB = Identity.from_seed(b"b" * 32)
PUBLISHERS = [Identity.from_seed(hashlib.sha256(bytes([i])).digest()) for i in range(8)]
KEY = key_for("group/round-1")
NOW = 1000.0


def rec(
    ident: Identity = ALICE, value: bytes = b"v", seq: int = 1, ttl: float = 60.0, key: bytes = KEY
) -> SignedRecord:
    return SignedRecord.create(ident, key, value, seq, NOW + ttl)


def test_key_for_is_sha256() -> None:
    assert key_for("x") == hashlib.sha256(b"x").digest()
    assert len(key_for("")) == 32


def test_valid_record_validates_and_roundtrips() -> None:
    r = rec()
    r.validate(NOW)
    assert SignedRecord.from_fields(r.to_fields()) == r
    assert r.position == int.from_bytes(KEY, "big")


@given(
    field=st.sampled_from(["key", "value", "publisher", "seq", "expires_at", "signature"]),
    data=st.data(),
)
@settings(max_examples=60, deadline=None)
def test_any_tampering_breaks_the_signature(field: str, data: st.DataObject) -> None:
    r = rec(value=b"hello")
    f = r.to_fields()
    if field == "key":
        f[0] = data.draw(st.binary(min_size=32, max_size=32).filter(lambda b: b != KEY))
    elif field == "value":
        f[1] = data.draw(st.binary(max_size=100).filter(lambda b: b != b"hello"))
    elif field == "publisher":
        f[2] = BOB.peer_id.raw
    elif field == "seq":
        f[3] = data.draw(st.integers(0, 2**64 - 1).filter(lambda s: s != 1))
    elif field == "expires_at":
        f[4] = data.draw(st.floats(NOW + 1, NOW + 3600).filter(lambda x: x != r.expires_at))
    else:
        sig = bytearray(r.signature)
        i = data.draw(st.integers(0, 63))
        sig[i] ^= data.draw(st.integers(1, 255))
        f[5] = bytes(sig)
    forged = SignedRecord.from_fields(f)
    with pytest.raises(BadRecordSignature, match="does not verify"):
        forged.validate(NOW)


def test_expired_record_rejected() -> None:
    r = rec(ttl=10)
    r.validate(NOW + 9.9)
    with pytest.raises(RecordExpired, match="expired"):
        r.validate(NOW + 10)


def test_expiry_too_far_rejected() -> None:
    limit = MAX_RECORD_TTL_S + CLOCK_SKEW_ALLOWANCE_S
    rec(ttl=limit).validate(NOW)
    with pytest.raises(RecordExpiryTooFar, match="MAX_RECORD_TTL_S"):
        rec(ttl=limit + 1).validate(NOW)


def test_oversize_value_rejected() -> None:
    with pytest.raises(RecordTooLarge):
        rec(value=b"x" * (MAX_RECORD_VALUE_BYTES + 1))
    r = rec()
    big = SignedRecord(
        r.key, b"x" * (MAX_RECORD_VALUE_BYTES + 1), r.publisher, r.seq, r.expires_at, r.signature
    )
    with pytest.raises(RecordTooLarge):
        big.validate(NOW)


def test_store_highest_seq_wins_per_publisher() -> None:
    s = RecordStore()
    assert s.put(rec(seq=2, value=b"two"), NOW)
    with pytest.raises(StaleRecord):
        s.put(rec(seq=1, value=b"one"), NOW)
    with pytest.raises(StaleRecord):
        s.put(rec(seq=2, value=b"other"), NOW)
    assert not s.put(rec(seq=2, value=b"two"), NOW)  # identical copy
    assert s.put(rec(seq=3, value=b"three"), NOW)
    assert s.put(rec(BOB, seq=1, value=b"bob"), NOW)
    got = s.get(KEY, NOW)
    assert sorted(r.value for r in got) == [b"bob", b"three"]
    assert len(s) == 2 and s.key_count == 1


def test_store_rejects_invalid() -> None:
    s = RecordStore()
    r = rec()
    forged = SignedRecord(r.key, b"evil", r.publisher, r.seq, r.expires_at, r.signature)
    with pytest.raises(BadRecordSignature):
        s.put(forged, NOW)
    assert len(s) == 0


def test_store_purges_expired() -> None:
    s = RecordStore()
    s.put(rec(ttl=10), NOW)
    s.put(rec(BOB, ttl=100), NOW)
    assert s.purge(NOW + 5) == 0
    assert s.purge(NOW + 10) == 1
    assert [r.publisher for r in s.get(KEY, NOW + 10)] == [BOB.peer_id]
    assert s.get(KEY, NOW + 100) == []
    assert s.purge(NOW + 100) == 1
    assert len(s) == 0 and s.key_count == 0 and s.total_bytes == 0


def test_per_key_limit_evicts_soonest_expiring() -> None:
    s = RecordStore(max_per_key=2)
    s.put(rec(PUBLISHERS[0], ttl=50), NOW)
    s.put(rec(PUBLISHERS[1], ttl=100), NOW)
    with pytest.raises(StoreFull):
        s.put(rec(PUBLISHERS[2], ttl=40), NOW)
    s.put(rec(PUBLISHERS[2], ttl=70), NOW)
    pubs = {r.publisher for r in s.get(KEY, NOW)}
    assert pubs == {PUBLISHERS[1].peer_id, PUBLISHERS[2].peer_id}


@given(
    st.lists(
        st.tuples(
            st.integers(0, 7),  # publisher
            st.integers(0, 5),  # key
            st.integers(0, 4),  # seq
            st.integers(1, 2000),  # value size
            st.integers(1, 500),  # ttl
            st.integers(0, 30),  # time step
        ),
        max_size=40,
    )
)
@settings(max_examples=60, deadline=None)
def test_store_never_exceeds_limits(ops: list[tuple[int, int, int, int, int, int]]) -> None:
    s = RecordStore(max_keys=3, max_per_key=3, max_bytes=6000)
    now = NOW
    for pub, key, seq, size, ttl, step in ops:
        now += step
        r = SignedRecord.create(PUBLISHERS[pub], key_for(str(key)), b"x" * size, seq, now + ttl)
        try:
            s.put(r, now)
            assert r in s.get(r.key, now)
        except RecordError:
            pass
        assert s.key_count <= 3
        assert s.total_bytes <= 6000
        assert all(len(s.get(k, 0.0)) <= 3 for k in s.held_keys())
        assert len(s) == sum(len(s.get(k, 0.0)) for k in s.held_keys())
        assert s.total_bytes == sum(r.size for k in s.held_keys() for r in s.get(k, 0.0))


def test_full_store_refuses_record_that_expires_first() -> None:
    s = RecordStore(max_keys=2)
    s.put(rec(key=key_for("a"), ttl=100), NOW)
    s.put(rec(key=key_for("b"), ttl=200), NOW)
    with pytest.raises(StoreFull):
        s.put(rec(key=key_for("c"), ttl=50), NOW)
    assert s.key_count == 2
    s.put(rec(key=key_for("c"), ttl=150), NOW)
    assert sorted(s.held_keys()) == sorted([key_for("b"), key_for("c")])
