"""Late joiners download the run's current state from peers and check its hash.

After every outer step each peer publishes ``[round, state_hash]`` under the DHT key
``{run}/head``. A joiner reads those records, takes the highest round, and the
state hash most publishers agree on at that round; it asks one of those publishers
(``state.request``), which streams the state (fp32 global params then fp32 outer
momentum) over a bulk stream tagged ``state/{round}/{hash}/{nonce}``. The joiner
recomputes the SHA-256 and accepts only an exact match, trying the next publisher
otherwise.

With the ledger on, only heads published by peers the chain admitted to the run
count (``admit``): an outsider that reaches the DHT cannot win the vote and hand
admitted peers its state.

Weakness: a majority of lying admitted publishers at the top round could feed a
joiner a bad state; the ledger's anchored round hashes are the intended fix.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import msgpack

from shoal.dht.records import key_for
from shoal.identity import PeerId
from shoal.runtime.node import Node
from shoal.wire.codec import MalformedMessage, Message
from shoal.wire.contact import Contact
from shoal.wire.fields import as_bytes, expect_len

log = logging.getLogger(__name__)

STATE_PREFIX = "state/"
HEAD_TTL_S = 3600.0
NONCE_BYTES = 16
# How long a joiner waits for one publisher's stream before trying the next.
FETCH_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class StateRequest(Message):
    """Ask for the state of ``round`` with ``state_hash`` (-1 / "": the newest held)."""

    TYPE: ClassVar[str] = "state.request"
    nonce: bytes
    round: int = -1
    state_hash: str = ""

    def to_fields(self) -> list[Any]:
        return [self.nonce, self.round, self.state_hash]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        if len(fields) == 1:  # protocol 1 peers ask for the newest state only
            return cls(as_bytes(fields[0], "nonce", NONCE_BYTES, exact=NONCE_BYTES))
        expect_len(fields, 3, cls.TYPE)
        nonce = as_bytes(fields[0], "nonce", NONCE_BYTES, exact=NONCE_BYTES)
        rnd, want = fields[1], fields[2]
        if not isinstance(rnd, int) or isinstance(rnd, bool) or rnd < -1:
            raise MalformedMessage(f"{cls.TYPE}: bad round {rnd!r}")
        if not isinstance(want, str) or len(want) not in (0, 64):
            raise MalformedMessage(f"{cls.TYPE}: bad state hash")
        return cls(nonce, rnd, want)


STATE_MESSAGES: tuple[type[Message], ...] = (StateRequest,)


@dataclass(frozen=True, slots=True)
class Snapshot:
    round: int
    data: bytes  # params then momentum, fp32 little-endian
    state_hash: str


def state_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StateServer:
    """Serves this peer's snapshots and publishes its head (runs on the node loop).

    It keeps the previous snapshot besides the latest: a joiner that read our head
    just before we finished the next round still gets the state it asked for, instead
    of a stream it must refuse (measured in the chaos suite: a refused fetch cost a
    joiner 60 s per publisher and left it rounds behind). Costs one more copy of the
    state in memory.
    """

    def __init__(self, node: Node, run: str) -> None:
        self.node = node
        self.run = run
        self.snapshot: Snapshot | None = None
        self.previous: Snapshot | None = None
        node.handle_protocol("state", self._on_message)

    async def publish(self, snap: Snapshot) -> None:
        if self.snapshot is not None and self.snapshot.state_hash != snap.state_hash:
            self.previous = self.snapshot
        self.snapshot = snap
        value = msgpack.packb([snap.round, snap.state_hash])
        await self.node.put(key_for(f"{self.run}/head"), value, ttl_s=HEAD_TTL_S)

    def _on_message(self, sender: Contact, msg: Message) -> None:
        if not isinstance(msg, StateRequest):
            return
        snap = self.snapshot
        if snap is None:
            log.info("state request from %s but no state yet", sender.peer_id.short())
            return
        prev = self.previous
        if prev is not None and (prev.round, prev.state_hash) == (msg.round, msg.state_hash):
            snap = prev
        elif msg.state_hash and (snap.round, snap.state_hash) != (msg.round, msg.state_hash):
            log.info(
                "state request from %s for round %d (%s) no longer held; serving round %d",
                sender.peer_id.short(), msg.round, msg.state_hash[:12], snap.round,
            )  # fmt: skip
        tag = f"{STATE_PREFIX}{snap.round}/{snap.state_hash}/{msg.nonce.hex()}"
        self.node.spawn(self._serve(sender, tag, snap))

    async def _serve(self, to: Contact, tag: str, snap: Snapshot) -> None:
        try:
            await self.node.transport.send_bulk(to, tag, [snap.data])
        except Exception as exc:  # the joiner retries with another peer
            log.warning("serving state to %s failed: %s", to.peer_id.short(), exc)


class _Receiver:
    def __init__(self, size: int, nonce: bytes, round_no: int, want: str) -> None:
        self.size = size
        self.round_no = round_no
        self.want = want
        self.nonce = nonce.hex()
        self.buf = bytearray(size)
        self.done: asyncio.Future[tuple[int, str, bytes]] = (
            asyncio.get_running_loop().create_future()
        )

    def accept(self, sender: Contact, tag: str, size: int) -> memoryview | None:
        # the router strips "state/{round}/{hash}/", leaving our nonce
        if tag != self.nonce or size != self.size:
            log.warning("refusing state stream %r of %d bytes from %s", tag, size, sender)
            return None
        return memoryview(self.buf)

    def on_complete(self, sender: Contact, tag: str, buf: memoryview) -> None:
        if not self.done.done():
            self.done.set_result((self.round_no, self.want, bytes(buf)))

    def on_failed(self, sender: Contact, tag: str, reason: str) -> None:
        log.warning("state stream from %s failed: %s", sender.peer_id.short(), reason)


Admit = Callable[[PeerId], bool]
MAX_WARNED = 1024  # bounds the memory an outsider flood can cost the warn-once set
_warned_unadmitted: set[PeerId] = set()


async def read_heads(
    node: Node, run: str, admit: Admit | None = None
) -> list[tuple[PeerId, int, str]]:
    """Every well-formed ``[round, hash]`` head of ``run``, from admitted publishers
    only when ``admit`` is given (it may block on the chain, so it runs off the loop)."""
    recs = await node.get(key_for(f"{run}/head"))
    heads = []
    for r in recs:
        try:
            rnd, h = msgpack.unpackb(r.value)
            if not isinstance(rnd, int) or not isinstance(h, str) or len(h) != 64:
                raise MalformedMessage("bad head")
        except Exception as exc:
            log.warning("ignoring malformed head from %s: %s", r.publisher.short(), exc)
            continue
        heads.append((r.publisher, rnd, h))
    if admit is None or not heads:
        return heads
    ok = await asyncio.to_thread(lambda: [admit(p) for p, _, _ in heads])
    refused = {p for (p, _, _), good in zip(heads, ok, strict=True) if not good}
    new = refused - _warned_unadmitted
    if new and len(_warned_unadmitted) < MAX_WARNED:  # once per peer: heads are polled
        _warned_unadmitted.update(new)
        log.warning(
            "ignoring heads of peers not admitted on-chain: %s",
            ", ".join(sorted(p.short() for p in new)),
        )
    return [head for head, good in zip(heads, ok, strict=True) if good]


def choose_head(hashes: Iterable[str]) -> str:
    """The state a round's peers should converge on: the most published hash, ties
    broken by the lowest hash, so that every peer reading the same heads picks the
    same one (a 4:4 split, or a group whose members all averaged alone, still
    converges)."""
    votes: Counter[str] = Counter(hashes)
    if not votes:
        raise ValueError("no heads to choose from")
    best: str = min(votes, key=lambda h: (-votes[h], h))
    return best


async def fetch_state(
    node: Node,
    run: str,
    size: int,
    wait_s: float = 60.0,
    admit: Admit | None = None,
    have: Snapshot | None = None,
) -> Snapshot | None:
    """Download and verify the swarm's latest state; None if no peer has one yet.

    ``have``: a state we already hold. If it is the one the vote picks (same round,
    same hash), it is returned without a download: peers that start a run from the
    same seed hold the round-0 state already, and fetching it cost each of them the
    whole model (most of a short run's traffic).
    """
    deadline = time.monotonic() + wait_s
    heads: list[tuple[PeerId, int, str]] = []
    while time.monotonic() < deadline:
        heads = await read_heads(node, run, admit)
        if heads:
            break
        await asyncio.sleep(1.0)
    if not heads:
        return None
    top = max(r for _, r, _ in heads)
    want = choose_head(h for _, r, h in heads if r == top)
    if have is not None and (have.round, have.state_hash) == (top, want):
        log.info("already hold the state of round %d (hash %s); no download", top, want[:12])
        return have
    sources = [p for p, r, h in heads if r == top and h == want]
    members = {m["peer_id"]: m["addr"] for m in node.peers() if m["state"] == "alive"}
    for pid in sources:
        addr = members.get(str(pid))
        if addr is None:
            continue
        nonce = os.urandom(NONCE_BYTES)
        rx = _Receiver(size, nonce, top, want)
        prefix = f"{STATE_PREFIX}{top}/{want}/"
        node.router.register(prefix, rx)
        try:
            await node.send(Contact(pid, addr), StateRequest(nonce, top, want))
            rnd, _, data = await asyncio.wait_for(rx.done, FETCH_TIMEOUT_S)
        except (TimeoutError, OSError, Exception) as exc:  # try the next publisher
            log.warning("state fetch from %s failed: %s", pid.short(), exc)
            continue
        finally:
            node.router.unregister(prefix)
        got = state_hash(data)
        if got != want or rnd != top:
            log.warning("state from %s has hash %s, want %s; discarded", pid.short(), got, want)
            continue
        log.info("synced state of round %d (hash %s) from %s", top, want[:12], pid.short())
        return Snapshot(top, data, want)
    raise RuntimeError(f"no peer served the state of round {top} with hash {want[:12]}")
