"""The Kademlia DHT core, sans-IO.

``DhtCore`` is fed events — commands (``bootstrap``, ``start_lookup``, ``put``,
``get``), messages, timers and send failures — each with the current time ``now``,
and returns the actions (``Send``, ``SetTimer``, ``Emit``) its runtime must carry out.
It holds no sockets, clock or global randomness: the only randomness comes from the
``random.Random`` it is given, so a simulator replays it exactly.

Timers it sets (names are unique within one core):

- ``rpc:<rid>``: an RPC's timeout; cancelled when the reply arrives.
- ``republish``: every ``republish_interval_s``, re-store the records this node
  published at the current k closest peers, so they survive the churn of holders.
- ``expire``: every ``expire_interval_s``, drop held records that have expired.
- ``refresh``: every ``refresh_interval_s``, look up a random id in each non-empty
  bucket that no lookup has touched for that long.

Operations (lookups, gets, puts) are numbered by ``op_id``; their results come back as
``Emit`` of LookupDone, GetDone or PutDone.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from shoal.dht.events import BootstrapDone, ContactSeen, GetDone, LookupDone, PutDone
from shoal.dht.lookup import Lookup
from shoal.dht.messages import (
    MAX_RID,
    FindNode,
    FindValue,
    Nodes,
    Ping,
    Pong,
    Store,
    StoreAck,
    Value,
)
from shoal.dht.records import (
    KEY_BYTES,
    MAX_PUBLISHERS_PER_KEY,
    MAX_STORE_BYTES,
    MAX_STORE_KEYS,
    RecordError,
    RecordStore,
    SignedRecord,
)
from shoal.dht.routing import AddResult, RoutingTable
from shoal.effects import Action, Emit, Send, SetTimer
from shoal.identity.keys import PeerId
from shoal.wire.codec import Message
from shoal.wire.contact import Contact
from shoal.wire.limits import MAX_LIST_ITEMS, MAX_MESSAGE_BYTES, MAX_STRING_BYTES

log = logging.getLogger(__name__)

# A VALUE reply carries records up to this many bytes (value plus per-record overhead),
# leaving a quarter of MAX_MESSAGE_BYTES for the contacts and msgpack framing.
VALUE_REPLY_BUDGET_BYTES = MAX_MESSAGE_BYTES * 3 // 4

REPUBLISH_TIMER = "republish"
EXPIRE_TIMER = "expire"
REFRESH_TIMER = "refresh"
_RPC_PREFIX = "rpc:"


@dataclass(frozen=True, slots=True)
class DhtConfig:
    k: int = 20  # replication and bucket size (Kademlia's k)
    alpha: int = 3  # queries in flight per lookup
    rpc_timeout_s: float = 5.0
    max_fails: int = 3  # consecutive failed RPCs before a contact is evicted
    republish_interval_s: float = 600.0
    # Suggested lifetime for records the application creates (now + record_ttl_s).
    record_ttl_s: float = 3600.0
    expire_interval_s: float = 60.0
    refresh_interval_s: float = 3600.0
    max_lookup_queries: int = 0  # 0: 16 * k
    store_max_keys: int = MAX_STORE_KEYS
    store_max_per_key: int = MAX_PUBLISHERS_PER_KEY
    store_max_bytes: int = MAX_STORE_BYTES


# Operation kinds.
_FIND, _BOOTSTRAP, _REFRESH, _GET, _PUT, _REPUBLISH = range(6)
# RPC kinds.
_RPC_FIND_NODE, _RPC_FIND_VALUE, _RPC_STORE, _RPC_PING = range(4)
_REPLY_TYPE: dict[int, type[Message]] = {
    _RPC_FIND_NODE: Nodes,
    _RPC_FIND_VALUE: Value,
    _RPC_STORE: StoreAck,
    _RPC_PING: Pong,
}


class _Op:
    __slots__ = ("found", "key", "kind", "lookup", "op_id", "pending_stores", "record", "stored")

    def __init__(self, op_id: int, kind: int, lookup: Lookup) -> None:
        self.op_id = op_id
        self.kind = kind
        self.lookup = lookup
        self.key = b""
        self.record: SignedRecord | None = None
        # GET: publisher raw -> (best record, depth of the shallowest responder with it)
        self.found: dict[bytes, tuple[SignedRecord, int]] = {}
        self.pending_stores = -1  # PUT: -1 while still looking up
        self.stored = 0


class _Rpc:
    __slots__ = ("contact", "kind", "op_id")

    def __init__(self, contact: Contact, kind: int, op_id: int) -> None:
        self.contact = contact
        self.kind = kind
        self.op_id = op_id


def _timer(rid: int) -> str:
    return f"{_RPC_PREFIX}{rid}"


class DhtCore:
    def __init__(self, me: Contact, config: DhtConfig, rng: random.Random) -> None:
        self.me = me
        self.config = config
        self._rng = rng
        self._my_key = me.peer_id.dht_key
        self.table = RoutingTable(self._my_key, config.k, config.max_fails)
        self.store = RecordStore(
            config.store_max_keys, config.store_max_per_key, config.store_max_bytes
        )
        self._ops: dict[int, _Op] = {}
        self._rpcs: dict[int, _Rpc] = {}
        self._published: dict[tuple[bytes, bytes], SignedRecord] = {}
        self._touched: dict[int, float] = {}  # bucket index -> last lookup into it
        self._next_op = 1
        self._next_rid = rng.getrandbits(48)
        self._started = False

    # -- introspection ---------------------------------------------------------------

    def contacts(self) -> list[Contact]:
        return self.table.contacts()

    @property
    def record_count(self) -> int:
        return len(self.store)

    @property
    def pending_rpcs(self) -> int:
        return len(self._rpcs)

    @property
    def active_ops(self) -> int:
        return len(self._ops)

    def published(self) -> list[SignedRecord]:
        return list(self._published.values())

    # -- commands --------------------------------------------------------------------

    def bootstrap(self, now: float, contacts: list[Contact]) -> list[Action]:
        """Add ``contacts`` and look up our own id, which announces us to the peers
        nearest us and fills our table. Emits BootstrapDone when finished."""
        actions = self._start(now)
        for c in contacts:
            actions += self._add(now, c)
        _, more = self._begin(now, _BOOTSTRAP, self._my_key)
        return actions + more

    def start_lookup(self, now: float, target: int) -> tuple[int, list[Action]]:
        """Find the k peers nearest ``target``; emits LookupDone."""
        return self._begin(now, _FIND, target, self._start(now))

    def put(self, now: float, record: SignedRecord) -> tuple[int, list[Action]]:
        """Store ``record`` at the k peers nearest its key and republish it until it
        expires (or a higher seq replaces it). Emits PutDone. Raises RecordError if
        the record is invalid at ``now``."""
        record.validate(now)
        slot = (record.key, record.publisher.raw)
        old = self._published.get(slot)
        if old is None or old.seq < record.seq:
            self._published[slot] = record
        return self._begin(now, _PUT, record.position, self._start(now), record=record)

    def get(self, now: float, key: bytes) -> tuple[int, list[Action]]:
        """Collect every valid record under ``key`` from the peers nearest it (and this
        node); emits GetDone."""
        if len(key) != KEY_BYTES:
            raise ValueError(f"a record key is {KEY_BYTES} bytes, got {len(key)}")
        return self._begin(now, _GET, int.from_bytes(key, "big"), self._start(now), key=key)

    def add_contact(self, now: float, contact: Contact) -> list[Action]:
        """A peer we learned of out of band (membership, config) is alive."""
        return self._start(now) + self._add(now, contact)

    def remove_contact(self, peer_id: PeerId) -> list[Action]:
        """Membership says ``peer_id`` is dead: drop it, promoting a replacement.
        Its pending RPCs still time out normally."""
        promoted = self.table.remove(peer_id)
        return [Emit(ContactSeen(promoted))] if promoted is not None else []

    # -- events ----------------------------------------------------------------------

    def on_unreachable(self, now: float, contact: Contact) -> list[Action]:
        """Sending to ``contact`` failed: fail its pending RPCs now."""
        actions = self._start(now) + self._count_failure(contact.peer_id)
        pid = contact.peer_id
        for rid in [r for r, rpc in self._rpcs.items() if rpc.contact.peer_id.raw == pid.raw]:
            rpc = self._rpcs.pop(rid)
            actions.append(SetTimer(_timer(rid), None))
            actions += self._rpc_failed(now, rpc)
        return actions

    def on_timer(self, now: float, name: str) -> list[Action]:
        actions = self._start(now)
        if name.startswith(_RPC_PREFIX):
            try:
                rid = int(name[len(_RPC_PREFIX) :])
            except ValueError:
                return actions
            rpc = self._rpcs.pop(rid, None)
            if rpc is not None:
                actions += self._count_failure(rpc.contact.peer_id)
                actions += self._rpc_failed(now, rpc)
        elif name == EXPIRE_TIMER:
            dropped = self.store.purge(now)
            if dropped:
                log.debug("expired %d records", dropped)
            actions.append(SetTimer(EXPIRE_TIMER, now + self.config.expire_interval_s))
        elif name == REPUBLISH_TIMER:
            actions += self._republish(now)
            actions.append(SetTimer(REPUBLISH_TIMER, now + self.config.republish_interval_s))
        elif name == REFRESH_TIMER:
            actions += self._refresh(now)
            actions.append(SetTimer(REFRESH_TIMER, now + self.config.refresh_interval_s))
        return actions

    def on_message(self, now: float, sender: Contact, msg: Message) -> list[Action]:
        """Handle ``msg`` from ``sender``, whose PeerId the transport authenticated."""
        actions = self._start(now) + self._add(now, sender)
        if isinstance(msg, FindNode):
            target = int.from_bytes(msg.target, "big")
            near = self.table.closest(target, self.config.k, exclude=sender.peer_id)
            actions.append(Send(sender, Nodes(msg.rid, tuple(near))))
        elif isinstance(msg, FindValue):
            actions.append(Send(sender, self._value_reply(now, sender, msg)))
        elif isinstance(msg, Store):
            actions.append(Send(sender, self._accept_store(now, sender, msg)))
        elif isinstance(msg, Ping):
            actions.append(Send(sender, Pong(msg.rid)))
        elif isinstance(msg, Nodes | Value | StoreAck | Pong):
            actions += self._on_reply(now, sender, msg)
        else:
            log.debug("ignoring %s from %s: not a DHT message", msg.TYPE, sender.peer_id.short())
        return actions

    # -- request handling ------------------------------------------------------------

    def _value_reply(self, now: float, sender: Contact, msg: FindValue) -> Value:
        records: list[SignedRecord] = []
        budget = VALUE_REPLY_BUDGET_BYTES
        for rec in self.store.get(msg.key, now):
            size = rec.size
            if size > budget or len(records) >= MAX_LIST_ITEMS:
                break
            budget -= size
            records.append(rec)
        near = self.table.closest(
            int.from_bytes(msg.key, "big"), self.config.k, exclude=sender.peer_id
        )
        return Value(msg.rid, tuple(records), tuple(near))

    def _accept_store(self, now: float, sender: Contact, msg: Store) -> StoreAck:
        try:
            self.store.put(msg.record, now)
        except RecordError as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.info("rejected STORE from %s: %s", sender.peer_id.short(), reason)
            return StoreAck(msg.rid, False, _clip(reason))
        return StoreAck(msg.rid, True, "")

    # -- replies and failures --------------------------------------------------------

    def _on_reply(
        self, now: float, sender: Contact, msg: Nodes | Value | StoreAck | Pong
    ) -> list[Action]:
        rpc = self._rpcs.get(msg.rid)
        if rpc is None or rpc.contact.peer_id.raw != sender.peer_id.raw:
            log.debug("ignoring %s from %s: no such request", msg.TYPE, sender.peer_id.short())
            return []
        del self._rpcs[msg.rid]
        actions: list[Action] = [SetTimer(_timer(msg.rid), None)]
        if not isinstance(msg, _REPLY_TYPE[rpc.kind]):
            log.info("%s answered with %s; counting a failure", sender.peer_id.short(), msg.TYPE)
            return actions + self._count_failure(sender.peer_id) + self._rpc_failed(now, rpc)
        op = self._ops.get(rpc.op_id)
        if op is None:
            return actions
        if isinstance(msg, StoreAck):
            if msg.ok:
                op.stored += 1
            else:
                log.info("%s refused our record: %s", sender.peer_id.short(), msg.reason)
            return actions + self._store_settled(op)
        if isinstance(msg, Nodes | Value):
            cand = op.lookup.on_response(sender.peer_id, msg.contacts)
            if cand is not None and isinstance(msg, Value):
                self._merge(now, op, msg.records, cand.depth)
            actions += self._step(now, op)
        return actions

    def _merge(
        self,
        now: float,
        op: _Op,
        records: tuple[SignedRecord, ...] | list[SignedRecord],
        depth: int,
    ) -> None:
        for rec in records:
            if rec.key != op.key:
                log.debug("dropping record for another key from a VALUE reply")
                continue
            pub = rec.publisher.raw
            have = op.found.get(pub)
            if have is not None and have[0].seq > rec.seq:
                continue
            if have is not None and have[0].seq == rec.seq:
                if depth < have[1] and have[0] == rec:
                    op.found[pub] = (rec, depth)
                continue
            if have is None and len(op.found) >= self.config.store_max_per_key:
                continue
            try:
                rec.validate(now)
            except RecordError as exc:
                log.info("dropping invalid record in a VALUE reply: %s", exc)
                continue
            op.found[pub] = (rec, depth)

    def _count_failure(self, peer_id: PeerId) -> list[Action]:
        _, promoted = self.table.fail(peer_id)
        return [Emit(ContactSeen(promoted))] if promoted is not None else []

    def _rpc_failed(self, now: float, rpc: _Rpc) -> list[Action]:
        op = self._ops.get(rpc.op_id)
        if op is None:
            return []
        if rpc.kind == _RPC_STORE:
            return self._store_settled(op)
        op.lookup.on_failure(rpc.contact.peer_id)
        return self._step(now, op)

    # -- operations ------------------------------------------------------------------

    def _begin(
        self,
        now: float,
        kind: int,
        target: int,
        actions: list[Action] | None = None,
        *,
        key: bytes = b"",
        record: SignedRecord | None = None,
    ) -> tuple[int, list[Action]]:
        actions = actions if actions is not None else []
        op_id = self._next_op
        self._next_op += 1
        idx = self.table.bucket_index(target)
        if idx >= 0:
            self._touched[idx] = now
        seeds = self.table.closest(target, self.config.k)
        lookup = Lookup(
            target,
            seeds,
            k=self.config.k,
            alpha=self.config.alpha,
            exclude=self.me.peer_id,
            max_queries=self.config.max_lookup_queries,
        )
        op = _Op(op_id, kind, lookup)
        op.record = record
        op.key = record.key if record is not None else key
        if kind == _GET:
            for rec in self.store.get(key, now):
                op.found[rec.publisher.raw] = (rec, 0)
            for (rkey, pub), rec in self._published.items():
                if rkey == key and rec.expires_at > now:
                    have = op.found.get(pub)
                    if have is None or have[0].seq < rec.seq:
                        op.found[pub] = (rec, 0)
        self._ops[op_id] = op
        return op_id, actions + self._step(now, op)

    def _step(self, now: float, op: _Op) -> list[Action]:
        if op.pending_stores >= 0:
            return []  # a PUT past its lookup ignores late lookup replies
        actions: list[Action] = []
        rpc_kind = _RPC_FIND_VALUE if op.kind == _GET else _RPC_FIND_NODE
        for contact in op.lookup.next_queries():
            msg: FindNode | FindValue
            if rpc_kind == _RPC_FIND_VALUE:
                msg = FindValue(self._rid(), op.key)
            else:
                msg = FindNode(self._rid(), op.lookup.target.to_bytes(KEY_BYTES, "big"))
            actions += self._send_rpc(now, contact, msg, rpc_kind, op.op_id)
        if not actions and op.lookup.done:
            actions += self._lookup_finished(now, op)
        return actions

    def _lookup_finished(self, now: float, op: _Op) -> list[Action]:
        lk = op.lookup
        if op.kind in (_PUT, _REPUBLISH):
            return self._store_phase(now, op)
        del self._ops[op.op_id]
        if op.kind == _FIND:
            closest = lk.result()
            return [Emit(LookupDone(op.op_id, lk.target, closest, lk.hops, bool(closest)))]
        if op.kind == _BOOTSTRAP:
            return [Emit(BootstrapDone(len(self.table), bool(lk.result())))]
        if op.kind == _GET:
            records = [op.found[p][0] for p in sorted(op.found)]
            hops = max((op.found[p][1] for p in op.found), default=0) if op.found else lk.hops
            return [Emit(GetDone(op.op_id, op.key, records, hops))]
        return []  # _REFRESH

    def _store_phase(self, now: float, op: _Op) -> list[Action]:
        record = op.record
        assert record is not None
        targets = op.lookup.result()
        op.pending_stores = 0
        pos = record.position
        if len(targets) < self.config.k or (self._my_key ^ pos) < (
            targets[-1].peer_id.dht_key ^ pos
        ):
            try:
                self.store.put(record, now)
                op.stored += 1
            except RecordError as exc:
                log.info("not holding our own record locally: %s", exc)
        actions: list[Action] = []
        for contact in targets:
            op.pending_stores += 1
            actions += self._send_rpc(
                now, contact, Store(self._rid(), record), _RPC_STORE, op.op_id
            )
        if op.pending_stores == 0:
            actions += self._put_finished(op)
        return actions

    def _store_settled(self, op: _Op) -> list[Action]:
        op.pending_stores -= 1
        return self._put_finished(op) if op.pending_stores == 0 else []

    def _put_finished(self, op: _Op) -> list[Action]:
        del self._ops[op.op_id]
        if op.kind == _PUT:
            return [Emit(PutDone(op.op_id, op.key, op.stored))]
        return []

    def _republish(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for slot, rec in list(self._published.items()):
            if rec.expires_at <= now:
                del self._published[slot]
                continue
            _, more = self._begin(now, _REPUBLISH, rec.position, record=rec)
            actions += more
        return actions

    def _refresh(self, now: float) -> list[Action]:
        actions: list[Action] = []
        stale_before = now - self.config.refresh_interval_s
        for i in self.table.nonempty_buckets():
            if self._touched.get(i, float("-inf")) > stale_before:
                continue
            dist = (1 << i) | self._rng.getrandbits(i) if i > 0 else 1
            _, more = self._begin(now, _REFRESH, self._my_key ^ dist)
            actions += more
        return actions

    # -- plumbing --------------------------------------------------------------------

    def _start(self, now: float) -> list[Action]:
        if self._started:
            return []
        self._started = True
        c = self.config
        return [
            SetTimer(EXPIRE_TIMER, now + c.expire_interval_s),
            SetTimer(REPUBLISH_TIMER, now + c.republish_interval_s),
            SetTimer(REFRESH_TIMER, now + c.refresh_interval_s),
        ]

    def _add(self, now: float, contact: Contact) -> list[Action]:
        if self.table.add(contact, now) is AddResult.ADDED:
            return [Emit(ContactSeen(contact))]
        return []

    def _rid(self) -> int:
        rid = self._next_rid
        self._next_rid = (rid + 1) & MAX_RID
        return rid

    def _send_rpc(
        self,
        now: float,
        contact: Contact,
        msg: Ping | FindNode | FindValue | Store,
        kind: int,
        op_id: int,
    ) -> list[Action]:
        self._rpcs[msg.rid] = _Rpc(contact, kind, op_id)
        return [Send(contact, msg), SetTimer(_timer(msg.rid), now + self.config.rpc_timeout_s)]


def _clip(text: str) -> str:
    data = text.encode()
    if len(data) <= MAX_STRING_BYTES:
        return text
    return data[:MAX_STRING_BYTES].decode(errors="ignore")
