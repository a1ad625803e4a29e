"""One node's side of one networked SecAgg session: what collector and member share.

``SecAggService`` is the node's ``secagg`` protocol handler (one per node) and holds
adverts that arrive before their session opens; ``SessionRun`` holds the group roster,
the fixed-point settings, liveness (probes, failed sends) and the bulk-stream receiving
both roles use. The roles are network_collector.py and network_member.py; the entry
point and the protocol's description are in group_driver.py.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np
import torch

from shoal.averaging.allreduce import AllReduceFailed, AllReduceResult
from shoal.averaging.bulk_router import BulkRouter
from shoal.averaging.stream_format import (
    STATUS_INCLUDED,
    STATUS_TEXT,
    payload_bytes,
)
from shoal.compression import EncodedTensor
from shoal.compression.int8 import DEFAULT_CHUNK_SIZE, Int8Codec
from shoal.identity.keys import Identity, PeerId
from shoal.numerics import all_finite
from shoal.secagg import fixed_point
from shoal.secagg.client import SecAggClient, SecAggError
from shoal.secagg.messages import MaskedInput
from shoal.secagg.network_messages import (
    MAX_SECAGG_GROUP,
    PROBE_TAG,
    SECAGG_MESSAGES,
    AdvertMsg,
    ResultHeader,
    result_header_bytes,
    session_id,
    tag_prefix,
)
from shoal.transport import BulkRejected, Transport, TransportClosed, TransportError
from shoal.wire.codec import Codec, Message
from shoal.wire.contact import Contact

log = logging.getLogger(__name__)

# Largest |w_i / W * x_i| a member may contribute per coordinate (values beyond are
# clipped, with a warning). Pseudo-gradients are far smaller; the bound sets how many
# fractional bits the ring leaves (frac_bits_for).
DEFAULT_CLIP = 16.0
PROBE_INTERVAL_S = 1.0
PROBE_FAILURES = 2  # consecutive failed probes before a member counts as dead
SEND_ATTEMPTS = 3  # transport errors on one send before the peer counts as dead
# The collector waits at most this fraction of timeout_s for each control step, and
# for masked streams to *start* at most MASKED_START_FRACTION (a started stream may
# run until timeout_s). A member waits for the result at most MEMBER_WAIT_FACTOR x.
CONTROL_WAIT_FRACTION = 0.25
MASKED_START_FRACTION = 0.5
MEMBER_WAIT_FACTOR = 2.0
# Adverts that arrive before the collector opened its session are held, bounded:
# at most this many sessions (oldest dropped), one advert per sender, for this long.
MAX_EARLY_SESSIONS = 8
EARLY_TTL_S = 120.0
# A member re-sends its advert this often until the collector answers (the collector
# may open its session later, or a dropped connection may have lost the message).
ADVERT_RESEND_S = 1.0
_BACKOFF_S = 0.05

Buffer = memoryview | bytes | bytearray
MessageHandler = Callable[[Contact, Message], None]


class SecAggHost(Protocol):
    """What the driver needs from a node (runtime.node.Node has all of it)."""

    identity: Identity
    transport: Transport
    router: BulkRouter
    codec: Codec

    def handle_protocol(self, protocol: str, handler: MessageHandler) -> None: ...


def frac_bits_for(n: int, clip: float) -> int:
    """Most fractional bits (<= 30) with which n values in [-clip, clip] cannot wrap."""
    for f in range(30, -1, -1):
        if n * clip * (1 << f) < fixed_point.RING // 2:
            return f
    fixed_point.check_capacity(n, clip, 0)  # raises RingOverflow with the reason
    return 0


def ring_bytes(masked: MaskedInput) -> memoryview:
    """Ring elements (int64 in [0, 2^32)) as little-endian uint32, 4 bytes each."""
    ring: np.ndarray = masked.values.numpy().astype("<u4")
    return ring.data.cast("B")  # the array's own buffer: no extra copy


class SecAggService:
    """One per node: the ``secagg`` protocol handler, dispatching by session id."""

    _instances: weakref.WeakKeyDictionary[object, SecAggService] = weakref.WeakKeyDictionary()

    def __init__(self, host: SecAggHost) -> None:
        self.host = host
        for t in SECAGG_MESSAGES:
            host.codec.register(t)
        host.handle_protocol("secagg", self._on_message)
        self._sessions: dict[bytes, SessionRun] = {}
        self._early: OrderedDict[bytes, tuple[float, dict[PeerId, tuple[Contact, AdvertMsg]]]] = (
            OrderedDict()
        )

    @classmethod
    def attach(cls, host: SecAggHost) -> SecAggService:
        svc = cls._instances.get(host)
        if svc is None:
            svc = cls._instances[host] = cls(host)
        return svc

    def open(self, run: SessionRun) -> list[tuple[Contact, AdvertMsg]]:
        """Register ``run``; returns the adverts that arrived for it early."""
        if run.sid in self._sessions:
            raise ValueError(f"secagg session {run.session!r} is already running here")
        self._sessions[run.sid] = run
        held = self._early.pop(run.sid, None)
        return list(held[1].values()) if held is not None else []

    def close(self, run: SessionRun) -> None:
        if self._sessions.get(run.sid) is run:
            del self._sessions[run.sid]

    def _on_message(self, sender: Contact, msg: Message) -> None:
        sid = getattr(msg, "session", None)
        if not isinstance(sid, bytes):
            return
        run = self._sessions.get(sid)
        if run is not None:
            run.on_message(sender, msg)
            return
        if not isinstance(msg, AdvertMsg):
            log.debug("secagg %s from %s for no open session", msg.TYPE, sender.peer_id.short())
            return
        now = time.monotonic()
        for old in [s for s, (t, _) in self._early.items() if now - t > EARLY_TTL_S]:
            del self._early[old]
        entry = self._early.get(sid)
        if entry is None:
            if len(self._early) >= MAX_EARLY_SESSIONS:
                self._early.popitem(last=False)
            entry = self._early[sid] = (now, {})
        if len(entry[1]) < MAX_SECAGG_GROUP:
            entry[1].setdefault(sender.peer_id, (sender, msg))


class Step(enum.Enum):
    ADVERTS = 1
    SHARES = 2
    MASKED = 3
    UNMASK = 4
    DONE = 5


class SessionRun:
    """What collector and member share: roster, settings, liveness, bulk receiving."""

    def __init__(
        self,
        host: SecAggHost,
        group: Sequence[Contact],
        session: str,
        flat: torch.Tensor,
        weights: Sequence[float],
        *,
        compression: str,
        timeout_s: float,
        clip: float,
        probe_interval_s: float,
    ) -> None:
        ids = [c.peer_id for c in group]
        n = len(ids)
        if not 2 <= n <= MAX_SECAGG_GROUP:
            raise ValueError(f"a secagg group has 2..{MAX_SECAGG_GROUP} members, got {n}")
        if any(a >= b for a, b in itertools.pairwise(ids)):
            raise ValueError("group must be sorted by peer id, without duplicates")
        me = host.transport.peer_id
        if me not in ids:
            raise ValueError("this node is not in the group")
        if len(weights) != n or not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError("need one finite weight > 0 per member")
        if compression not in ("none", "int8"):
            raise ValueError(f"compression must be 'none' or 'int8', got {compression!r}")
        if flat.dim() != 1 or flat.dtype != torch.float32 or flat.device.type != "cpu":
            raise ValueError("flat must be a 1-D fp32 CPU tensor")
        if not all_finite(flat):
            raise ValueError("flat holds NaN/Inf")
        if not timeout_s > 0 or not probe_interval_s > 0 or not clip > 0:
            raise ValueError("timeout_s, probe_interval_s and clip must be > 0")
        self.host = host
        self.service = SecAggService.attach(host)
        self.group = list(group)
        self.ids = ids
        self.n = n
        self.t = n // 2 + 1
        self.idx = ids.index(me)
        self.index = {p: i for i, p in enumerate(ids)}
        self.session = session
        self.sid = session_id(session)
        self.prefix = tag_prefix(self.sid)
        self.flat = flat
        self.numel = flat.numel()
        self.k = self.numel + 1  # the weight rides in the last slot
        self.weights = [float(w) for w in weights]
        self.total_w = sum(self.weights)
        self.clip = clip
        self.frac = frac_bits_for(n, clip)
        self.codec = compression
        self.timeout = timeout_s
        self.probe_interval = probe_interval_s
        # Bound to every setting the members must share: a member on other settings
        # fails the advert signature check instead of corrupting the sum.
        self.session_bytes = (
            f"shoal-secagg-v1|{session}|n={n}|numel={self.numel}|clip={clip!r}"
            f"|frac={self.frac}|codec={compression}"
        ).encode()
        self.roster = {i + 1: p for i, p in enumerate(ids)}
        self.client = SecAggClient(
            self.idx + 1, n, self.t, self.session_bytes, self.k, clip=clip,
            frac_bits=self.frac, identity=host.identity, roster=self.roster,
        )  # fmt: skip
        self.changed = asyncio.Event()
        self.dead: dict[int, str] = {}
        self._probe_failures: dict[int, int] = {}
        self._last_heard: dict[int, float] = {}
        self._stopping = False
        self._probing = False
        self.fatal: str | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self._int8 = Int8Codec(DEFAULT_CHUNK_SIZE)
        self.setup()

    def setup(self) -> None:
        """Role-specific state (subclasses)."""

    # ------------------------------------------------------------- helpers
    def who(self, m: int) -> str:
        return f"{self.ids[m].short()} (member {m})"

    @property
    def expected_masked_bytes(self) -> int:
        return 4 * self.k

    @property
    def expected_result_bytes(self) -> int:
        return result_header_bytes(self.n) + payload_bytes(self.codec, self.numel)

    def heard(self, m: int) -> None:
        self._last_heard[m] = asyncio.get_running_loop().time()
        self._probe_failures.pop(m, None)

    def mark_dead(self, m: int, reason: str) -> None:
        if m not in self.dead:
            self.dead[m] = f"unreachable: {reason}"
            log.warning("secagg %s: %s is unreachable: %s", self.session, self.who(m), reason)
            self.changed.set()

    def weighted_input(self) -> torch.Tensor:
        """[x * w / W, w / W] in float64 (the client encodes it to the ring). CPU
        work: call it from a worker thread."""
        frac = self.weights[self.idx] / self.total_w
        x = torch.empty(self.k, dtype=torch.float64)
        body = x[: self.numel]
        body.copy_(self.flat)
        body.mul_(frac)
        x[self.numel] = frac
        peak = float(self.flat.abs().max()) * frac if self.numel else 0.0
        if peak > self.clip:
            log.warning("secagg %s: values up to %g exceed the clip %g and are clipped",
                        self.session, peak, self.clip)  # fmt: skip
        return x

    def mask_input(self, blobs: Mapping[int, bytes]) -> MaskedInput:
        """Weighted input, encoded and masked (worker thread)."""
        return self.client.on_shares(blobs, self.weighted_input())

    async def send(self, m: int, msg: Message) -> bool:
        """Send a control message; False (and ``m`` marked dead) after SEND_ATTEMPTS."""
        for attempt in range(SEND_ATTEMPTS):
            if m in self.dead:
                return False
            try:
                await self.host.transport.send(self.group[m], msg)
                self.bytes_sent += len(self.host.codec.encode(msg))
                return True
            except TransportClosed as exc:
                self.fatal = f"our transport closed: {exc}"
                self.changed.set()
                return False
            except (TransportError, OSError) as exc:
                if attempt + 1 == SEND_ATTEMPTS:
                    self.mark_dead(m, f"{type(exc).__name__}: {exc}")
                    return False
                await asyncio.sleep(_BACKOFF_S * 2**attempt)
        return False

    async def send_bulk(self, m: int, tag: str, buffers: list[Buffer]) -> bool:
        """Stream to ``m``; False if refused (logged) or ``m`` turned out dead."""
        size = sum(memoryview(b).nbytes for b in buffers)
        for attempt in range(SEND_ATTEMPTS):
            if m in self.dead:
                return False
            try:
                await self.host.transport.send_bulk(self.group[m], self.prefix + tag, buffers)
                self.bytes_sent += size
                self.heard(m)
                return True
            except BulkRejected as exc:
                log.info("secagg %s: %s refused %r: %s", self.session, self.who(m), tag, exc)
                return False
            except TransportClosed as exc:
                self.fatal = f"our transport closed: {exc}"
                self.changed.set()
                return False
            except TransportError as exc:
                if attempt + 1 == SEND_ATTEMPTS:
                    self.mark_dead(m, f"{type(exc).__name__}: {exc}")
                    return False
                await asyncio.sleep(_BACKOFF_S * 2**attempt)
        return False

    async def wait(self, done: Callable[[], bool], deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while not done() and self.fatal is None and loop.time() < deadline:
            self.changed.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self.changed.wait()
            except TimeoutError:
                pass

    # ------------------------------------------------------------ liveness
    def waiting_on(self) -> list[int]:
        return []

    async def _probe(self, m: int) -> None:
        try:
            async with asyncio.timeout(max(2.0, 2 * self.probe_interval)):
                await self.host.transport.send_bulk(self.group[m], self.prefix + PROBE_TAG, [])
        except BulkRejected:
            pass  # it answered: alive, just not (or no longer) in this session
        except TransportClosed as exc:
            self.fatal = f"our transport closed: {exc}"
            self.changed.set()
            return
        except (TransportError, TimeoutError, OSError) as exc:
            failures = self._probe_failures.get(m, 0) + 1
            self._probe_failures[m] = failures
            if failures >= PROBE_FAILURES:
                self.mark_dead(m, f"{failures} liveness probes failed: {type(exc).__name__}")
            return
        self.heard(m)

    async def _probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await asyncio.sleep(self.probe_interval)
            now = loop.time()
            targets = [
                m for m in self.waiting_on()
                if m not in self.dead and now - self._last_heard.get(m, -1e9) >= self.probe_interval
            ]  # fmt: skip
            if targets and not self._stopping:
                self._probing = True
                try:
                    await asyncio.gather(*(self._probe(m) for m in targets))
                finally:
                    self._probing = False

    # ------------------------------------------------------ BulkReceiver side
    def accept(self, sender: Contact, tag: str, size: int) -> memoryview | None:
        m = self.index.get(sender.peer_id)
        if m is None or m == self.idx:
            log.warning("secagg %s: refusing %r from non-member %s", self.session, tag,
                        sender.peer_id.short())  # fmt: skip
            return None
        self.heard(m)
        if tag == PROBE_TAG:
            return memoryview(bytearray(0)) if size == 0 else None
        return self.accept_stream(m, tag, size)

    def accept_stream(self, m: int, tag: str, size: int) -> memoryview | None:
        return None

    def on_complete(self, sender: Contact, tag: str, buf: memoryview) -> None:
        m = self.index.get(sender.peer_id)
        if m is not None and tag != PROBE_TAG:
            self.stream_done(m, tag, buf)
            self.changed.set()

    def stream_done(self, m: int, tag: str, buf: memoryview) -> None:
        pass

    def on_failed(self, sender: Contact, tag: str, reason: str) -> None:
        m = self.index.get(sender.peer_id)
        if m is not None and tag != PROBE_TAG:
            self.stream_failed(m, tag, reason)
            self.changed.set()

    def stream_failed(self, m: int, tag: str, reason: str) -> None:
        pass

    def on_message(self, sender: Contact, msg: Message) -> None:
        raise NotImplementedError

    # -------------------------------------------------------------- driver
    async def run(self) -> AllReduceResult:
        early = self.service.open(self)
        self.host.router.register(self.prefix, self)
        try:
            for sender, msg in early:
                self.on_message(sender, msg)
            outcome: AllReduceResult | Exception
            async with asyncio.TaskGroup() as tg:
                prober = tg.create_task(self._probe_loop())
                try:
                    outcome = await self.drive()
                except SecAggError as exc:  # a core refusal we did not map: fail cleanly
                    detail = f"secagg {self.session}: {exc}"
                    outcome = AllReduceFailed([], {}, detail)
                except Exception as exc:  # raised below, not wrapped in an ExceptionGroup
                    outcome = exc
                finally:
                    self._stopping = True
                    if self._probing:  # let a probe in flight finish (no half streams)
                        await asyncio.wait([prober], timeout=self.probe_interval + 2.0)
                    prober.cancel()
        finally:
            self.host.router.unregister(self.prefix)
            self.service.close(self)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def drive(self) -> AllReduceResult:
        raise NotImplementedError

    def result(self, average: torch.Tensor, header: ResultHeader) -> AllReduceResult:
        contributors = [self.ids[m] for m in range(self.n) if header.statuses[m] == STATUS_INCLUDED]
        excluded = {
            self.ids[m]: self.reason_for(m, s)
            for m, s in enumerate(header.statuses)
            if s != STATUS_INCLUDED
        }
        return AllReduceResult(
            average=average,
            total_weight=header.total_weight,
            contributors=contributors,
            excluded=excluded,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            shard_weights=[header.total_weight],
        )

    def reason_for(self, m: int, status: int) -> str:
        return f"secagg: {STATUS_TEXT.get(status, f'status {status}')}"

    def decode_payload(self, payload: Buffer) -> torch.Tensor:
        if self.codec == "none":
            return torch.frombuffer(bytearray(payload), dtype=torch.float32, count=self.numel)
        enc = EncodedTensor("int8", (self.numel,), bytes(payload), chunk_size=DEFAULT_CHUNK_SIZE)
        return self._int8.decode(enc).reshape(-1)
