"""Hostile peers: arbitrary valid messages in any order must never crash a core,
and its memory stays within the configured limits."""

import hashlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.dht import (
    DHT_MESSAGES,
    DhtConfig,
    DhtCore,
    FindNode,
    FindValue,
    GetDone,
    Nodes,
    Ping,
    Pong,
    SignedRecord,
    Store,
    StoreAck,
    Value,
    key_for,
)
from shoal.effects import Emit, Send, SetTimer
from shoal.identity import Identity, PeerId
from shoal.wire.codec import Codec
from shoal.wire.contact import Contact
from shoal.wire.limits import MAX_LIST_ITEMS, MAX_MESSAGE_BYTES, MAX_RECORD_VALUE_BYTES

CODEC = Codec(DHT_MESSAGES)
K = 4
CFG = DhtConfig(k=K, alpha=2, store_max_keys=3, store_max_per_key=3, store_max_bytes=200_000)
ME = Contact(Identity.from_seed(b"\x01" * 32).peer_id, "me:1")
POOL = [Contact(PeerId(hashlib.sha256(b"peer%d" % i).digest()), f"p{i}:1") for i in range(600)]
PUBS = [Identity.from_seed(hashlib.sha256(b"pub%d" % i).digest()) for i in range(6)]
KEYS = [key_for(str(i)) for i in range(5)]
NOW = 100.0
RECORDS = [
    SignedRecord.create(p, k, b"v" * size, seq, NOW + ttl)
    for p in PUBS
    for k in KEYS[:3]
    for seq, size, ttl in [(1, 10, 50), (2, 40_000, 500)]
]
_r = RECORDS[0]
FORGED = [
    SignedRecord(_r.key, b"evil", _r.publisher, _r.seq, _r.expires_at, _r.signature),
    SignedRecord(_r.key, _r.value, PUBS[1].peer_id, _r.seq, _r.expires_at, _r.signature),
    SignedRecord.create(PUBS[0], KEYS[0], b"x", 9, NOW - 1),  # already expired
    SignedRecord.create(PUBS[0], KEYS[0], b"x", 9, NOW + 10**7),  # too far ahead
]

contacts_st = st.one_of(
    st.lists(st.sampled_from([*POOL, ME]), max_size=30),
    st.integers(0, 599 - MAX_LIST_ITEMS).map(lambda i: POOL[i : i + MAX_LIST_ITEMS]),
)
rid_st = st.integers(0, 2**64 - 1)
record_st = st.sampled_from(RECORDS + FORGED)
sender_st = st.sampled_from(POOL[:40])

event_st = st.one_of(
    st.tuples(st.just("msg"), sender_st, st.builds(Ping, rid_st)),
    st.tuples(st.just("msg"), sender_st, st.builds(Pong, rid_st)),
    st.tuples(
        st.just("msg"), sender_st, st.builds(FindNode, rid_st, st.binary(min_size=32, max_size=32))
    ),
    st.tuples(st.just("msg"), sender_st, st.builds(FindValue, rid_st, st.sampled_from(KEYS))),
    st.tuples(st.just("msg"), sender_st, st.builds(Store, rid_st, record_st)),
    st.tuples(st.just("msg"), sender_st, st.builds(StoreAck, rid_st, st.booleans(), st.just("no"))),
    st.tuples(st.just("reply"), sender_st, contacts_st),
    st.tuples(st.just("value"), sender_st, st.lists(record_st, max_size=8), contacts_st),
    st.tuples(st.just("ack"), st.booleans()),
    st.tuples(st.just("lookup"), st.integers(0, 2**256 - 1)),
    st.tuples(st.just("get"), st.sampled_from(KEYS)),
    st.tuples(st.just("put"), st.sampled_from(RECORDS)),
    st.tuples(
        st.just("timer"),
        st.sampled_from(["rpc:x", "rpc:1", "bogus", "expire", "republish", "refresh", "pending"]),
    ),
    st.tuples(st.just("unreachable"), sender_st),
    st.tuples(st.just("remove"), sender_st),
    st.tuples(st.just("tick"), st.floats(0, 30)),
)


def check_bounds(core: DhtCore) -> None:
    assert len(core.table) <= 256 * K and core.table.cache_size <= 256 * K
    assert core.store.key_count <= CFG.store_max_keys
    assert core.store.total_bytes <= CFG.store_max_bytes
    assert all(len(core.store.get(k, 0.0)) <= CFG.store_max_per_key for k in core.store.held_keys())


@given(st.lists(event_st, max_size=40), st.integers(0, 2**32))
@settings(max_examples=200, deadline=None)
def test_hostile_sequences_never_crash_and_stay_bounded(events: list, seed: int) -> None:
    core = DhtCore(ME, CFG, random.Random(seed))
    now = NOW
    pending: dict[int, Contact] = {}  # rid -> who we asked
    timers: list[str] = []
    rng = random.Random(seed)
    gets = 0
    for ev in events:
        kind = ev[0]
        if kind == "msg":
            actions = core.on_message(now, ev[1], ev[2])
        elif kind in ("reply", "value", "ack"):
            # Answer one of our real requests (or a made-up one), from the right peer
            # or an impostor.
            if pending and rng.random() < 0.8:
                rid = rng.choice(sorted(pending))
                sender = pending[rid] if rng.random() < 0.8 else POOL[rng.randrange(40)]
            else:
                rid, sender = rng.getrandbits(64), POOL[rng.randrange(40)]
            if kind == "reply":
                msg = Nodes(rid, tuple(ev[2]))
            elif kind == "value":
                msg = Value(rid, tuple(ev[2]), tuple(ev[3]))
            else:
                msg = StoreAck(rid, ev[1], "")
            actions = core.on_message(now, sender, msg)
        elif kind == "lookup":
            actions = core.start_lookup(now, ev[1])[1]
        elif kind == "get":
            actions = core.get(now, ev[1])[1]
        elif kind == "put":
            if ev[1].expires_at <= now:
                continue
            actions = core.put(now, ev[1])[1]
        elif kind == "timer":
            name = ev[1]
            if name == "pending" and timers:
                name = timers.pop(0)
            actions = core.on_timer(now, name)
        elif kind == "unreachable":
            actions = core.on_unreachable(now, ev[1])
        elif kind == "remove":
            actions = core.remove_contact(ev[1].peer_id)
        else:
            now += ev[1]
            continue
        for a in actions:
            if isinstance(a, Send):
                data = CODEC.encode(a.msg)  # every message we send fits the wire limits
                assert len(data) <= MAX_MESSAGE_BYTES
                if isinstance(a.msg, Ping | FindNode | FindValue | Store):
                    pending[a.msg.rid] = a.to
                assert a.to.peer_id != ME.peer_id
            elif isinstance(a, SetTimer) and a.at is not None and a.name.startswith("rpc:"):
                timers.append(a.name)
            elif isinstance(a, Emit) and isinstance(a.event, GetDone):
                gets += 1
                for r in a.event.records:  # forged or foreign records never get through
                    assert r.key == a.event.key
                    r.validate(now)
        check_bounds(core)
    # Every pending RPC belongs to a timer the core set, so it can always be reaped.
    while timers:
        now += 1000
        for a in core.on_timer(now, timers.pop(0)):
            if isinstance(a, SetTimer) and a.at is not None and a.name.startswith("rpc:"):
                timers.append(a.name)
    assert core.pending_rpcs == 0 and core.active_ops == 0


def test_value_reply_fits_one_message_whatever_the_store_holds() -> None:
    core = DhtCore(ME, DhtConfig(), random.Random(0))
    key = KEYS[0]
    for i in range(40):
        ident = Identity.from_seed(hashlib.sha256(b"big%d" % i).digest())
        rec = SignedRecord.create(ident, key, bytes([i]) * MAX_RECORD_VALUE_BYTES, 1, NOW + 60)
        core.store.put(rec, NOW)
    for c in POOL[:30]:
        core.add_contact(NOW, c)
    (send,) = [a for a in core.on_message(NOW, POOL[0], FindValue(7, key)) if isinstance(a, Send)]
    assert isinstance(send.msg, Value)
    assert 0 < len(send.msg.records) < 40 and len(send.msg.contacts) == 20
    assert len(CODEC.encode(send.msg)) <= MAX_MESSAGE_BYTES


def test_invalid_store_is_refused_with_reason() -> None:
    core = DhtCore(ME, DhtConfig(), random.Random(0))
    for bad, reason in zip(
        FORGED,
        ["BadRecordSignature", "BadRecordSignature", "RecordExpired", "RecordExpiryTooFar"],
        strict=True,
    ):
        (send,) = [a for a in core.on_message(NOW, POOL[1], Store(3, bad)) if isinstance(a, Send)]
        assert send.msg == StoreAck(3, False, send.msg.reason)
        assert send.msg.reason.startswith(reason)
    assert core.record_count == 0
    (send,) = [
        a for a in core.on_message(NOW, POOL[1], Store(4, RECORDS[0])) if isinstance(a, Send)
    ]
    assert send.msg == StoreAck(4, True, "") and core.record_count == 1


def test_reply_from_wrong_peer_or_unknown_rid_is_ignored() -> None:
    core = DhtCore(ME, DhtConfig(k=K), random.Random(0))
    core.add_contact(NOW, POOL[0])
    _op, actions = core.start_lookup(NOW, 5)
    core.add_contact(NOW, POOL[1])  # known, so its messages change nothing visible
    (send,) = [a for a in actions if isinstance(a, Send)]
    rid = send.msg.rid  # type: ignore[attr-defined]
    assert core.on_message(NOW, POOL[1], Nodes(rid, tuple(POOL[2:6]))) == []  # impostor
    assert core.on_message(NOW, POOL[0], Nodes(rid + 1, tuple(POOL[2:6]))) == []  # unknown rid
    assert core.pending_rpcs == 1
    out = core.on_message(NOW, POOL[0], Nodes(rid, ()))
    assert core.pending_rpcs == 0 and core.active_ops == 0
    assert any(getattr(a, "event", None) is not None for a in out)


def test_get_drops_forged_expired_and_foreign_records() -> None:
    core = DhtCore(ME, DhtConfig(k=K), random.Random(0))
    core.add_contact(NOW, POOL[0])
    op, actions = core.get(NOW, KEYS[0])
    (send,) = [a for a in actions if isinstance(a, Send)]
    assert isinstance(send.msg, FindValue)
    good = RECORDS[0]  # PUBS[0], KEYS[0]
    foreign = next(r for r in RECORDS if r.key != KEYS[0])
    out = core.on_message(NOW, POOL[0], Value(send.msg.rid, (*FORGED, foreign, good), ()))
    (done,) = [a.event for a in out if isinstance(a, Emit) and isinstance(a.event, GetDone)]
    assert done.op_id == op and done.key == KEYS[0]
    assert done.records == [good] and done.hops == 1
