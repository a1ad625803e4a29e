"""Secure aggregation among real peers: the sans-IO SecAgg cores over the transport.

    res = await secure_average(node, group, session, flat, weights, timeout_s=60.0)

``group`` is the round's group (sorted by peer id, the same list at every member);
``weights`` are the members' public sample counts (the round core's
``member_samples``). SecAgg ids are 1..n in group order; member 0, the lowest peer id,
is the **collector**: it relays keys and shares, sums the masked inputs, removes the
masks with the survivors' Shamir shares, and sends the *unmasked average* to every
member as one bulk stream (the same bytes to all), so every member applies identical
bits, as with the plain all-reduce. The collector runs a client of its own, fed
locally. It learns the sum and who took part; no member's update, unless ``t`` peers
collude with it (``t = n // 2 + 1``).

Weighting: member i masks ``[x_i * w_i / W, w_i / W]`` (W = sum of all members'
weights, known to all), so the masked sum holds the weighted sum and the weight of
the members that made it in; the average is the first over the second, i.e. the
sample-weighted mean of the survivors. The weight slot is checked against the
survivors' public weights: a sum that disagrees (a member that used another weight, or
sent a random vector) fails the session instead of being applied.

Fixed point: each weighted value is clipped to ``clip`` and encoded with the most
fractional bits for which n summed values cannot wrap Z_2^32 (``frac_bits_for``); for
n = 4 and clip 16 that is 24 bits, a rounding error <= n 2^-25 on the average (times
W over the survivors' weight).

Steps (network_messages.py has the formats): adverts -> collector -> every member
(signatures checked against the group roster at both ends) -> encrypted shares ->
collector routes them -> masked inputs as bulk streams -> unmask request to the
survivors -> their shares -> collector unmasks -> result stream. Each collector step
waits for every member at most a fraction of ``timeout_s``; a member found dead
(two failed liveness probes, or three failed sends) is not waited for. A member
dropped after its shares is recovered from the others' shares of its mask key.

Faults and what happens:
- an advert whose signature does not verify, shares that are malformed or do not cover
  every advertiser, a masked stream of the wrong size, one that carries more or fewer
  bytes than announced, or a masked vector outside the ring: that member is left out
  with its reason logged (``AllReduceResult.excluded``); the others finish.
- fewer than ``t`` members left at any step, or a sum whose weight slot is wrong: the
  collector aborts the session and every member raises ``AllReduceFailed`` naming the
  missing members, so the round core re-forms the group (as for the plain all-reduce).
- the collector dead, silent, relaying an advert that does not verify, or sending an
  unusable result: the member raises ``AllReduceFailed([collector])``.
Not defended: a member that follows the protocol but masks a garbage vector (or sends
wrong unmask shares) corrupts the sum undetected unless its weight slot gives it away;
SecAgg hides updates, so no robust rule can look at them (docs/ARCHITECTURE.md). A
lying collector controls the result, as a lying shard owner does in the all-reduce;
the round's model-hash check catches one that sends different results to different
members.
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
    STATUS_MALFORMED,
    STATUS_NOT_RECEIVED,
    STATUS_REJECTED,
    STATUS_STREAM_FAILED,
    STATUS_TEXT,
    STATUS_UNREACHABLE,
    payload_bytes,
)
from shoal.compression import CompressionError, EncodedTensor
from shoal.compression.int8 import DEFAULT_CHUNK_SIZE, Int8Codec
from shoal.identity.keys import Identity, PeerId, verify
from shoal.numerics import all_finite
from shoal.secagg import fixed_point
from shoal.secagg.client import Phase, SecAggClient, SecAggError
from shoal.secagg.collector import SecAggCollector
from shoal.secagg.messages import EncryptedShares, KeyAdvert, MaskedInput, UnmaskRequest
from shoal.secagg.messages import UnmaskShares as CoreUnmaskShares
from shoal.secagg.network_messages import (
    MASKED_TAG,
    MAX_SECAGG_GROUP,
    PROBE_TAG,
    RESULT_TAG,
    SECAGG_MESSAGES,
    AbortMsg,
    AdvertMsg,
    AdvertsMsg,
    ResultHeader,
    RoutedMsg,
    SharesMsg,
    UnmaskMsg,
    UnmaskRequestMsg,
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


MEAN_ONLY = (
    "secure aggregation works only with aggregator='mean': pairwise masks hide each "
    "peer's update and reveal only the sum, while {rule} needs the individual updates "
    "(order statistics per coordinate, or distances/norms between whole updates)"
)


def require_mean(aggregator: str) -> None:
    """Refuse a robust rule with SecAgg, saying why (see docs/ARCHITECTURE.md)."""
    if aggregator != "mean":
        raise ValueError(MEAN_ONLY.format(rule=repr(aggregator)))


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
        self._sessions: dict[bytes, _Run] = {}
        self._early: OrderedDict[bytes, tuple[float, dict[PeerId, tuple[Contact, AdvertMsg]]]] = (
            OrderedDict()
        )

    @classmethod
    def attach(cls, host: SecAggHost) -> SecAggService:
        svc = cls._instances.get(host)
        if svc is None:
            svc = cls._instances[host] = cls(host)
        return svc

    def open(self, run: _Run) -> list[tuple[Contact, AdvertMsg]]:
        """Register ``run``; returns the adverts that arrived for it early."""
        if run.sid in self._sessions:
            raise ValueError(f"secagg session {run.session!r} is already running here")
        self._sessions[run.sid] = run
        held = self._early.pop(run.sid, None)
        return list(held[1].values()) if held is not None else []

    def close(self, run: _Run) -> None:
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


class _Step(enum.Enum):
    ADVERTS = 1
    SHARES = 2
    MASKED = 3
    UNMASK = 4
    DONE = 5


class _Run:
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


class CollectorRun(_Run):
    """The collector's side (member 0): relay, sum, unmask, send the average."""

    # Keep what the collector saw of each member's masked input (tests check privacy).
    keep_received = False

    def setup(self) -> None:
        self.core = SecAggCollector(self.n, self.t, self.session_bytes, self.k,
                                    frac_bits=self.frac)  # fmt: skip
        self.step = _Step.ADVERTS
        self.excluded: dict[int, tuple[int, str]] = {}
        self._incoming: dict[int, bytearray] = {}
        self._arrived: dict[int, bytearray] = {}
        self.received: dict[int, torch.Tensor] = {}

    def exclude(self, m: int, status: int, reason: str) -> None:
        if m == self.idx or m in self.excluded:
            return
        self.excluded[m] = (status, reason)
        self._incoming.pop(m, None)
        self._arrived.pop(m, None)
        log.warning("secagg %s: leaving out %s: %s", self.session, self.who(m), reason)
        self.changed.set()

    def reason_for(self, m: int, status: int) -> str:
        if m in self.excluded:
            return f"secagg: {self.excluded[m][1]}"
        if m in self.dead:
            return f"secagg: {self.dead[m]}"
        return super().reason_for(m, status)

    def _pending(self, m: int, have: set[int]) -> bool:
        return m + 1 not in have and m not in self.excluded and m not in self.dead

    def waiting_on(self) -> list[int]:
        if self.step is _Step.ADVERTS:
            have = set(self.core.adverts)
        elif self.step is _Step.SHARES:
            have = set(self.core.shares) | {m + 1 for m in range(self.n)
                                            if m + 1 not in self.core.adverts}  # fmt: skip
        elif self.step is _Step.MASKED:
            have = set(self.core.masked) | {m + 1 for m in range(self.n)
                                            if m + 1 not in self.core.shares}  # fmt: skip
        elif self.step is _Step.UNMASK:
            have = set(self.core.unmask) | {m + 1 for m in range(self.n)
                                            if m + 1 not in self.core.survivors}  # fmt: skip
        else:
            return []
        return [m for m in range(self.n) if m != self.idx and self._pending(m, have)]

    # -------------------------------------------------------------- messages
    def on_message(self, sender: Contact, msg: Message) -> None:
        m = self.index.get(sender.peer_id)
        if m is None or m == self.idx:
            log.warning("secagg %s: %s from non-member %s ignored", self.session, msg.TYPE,
                        sender.peer_id.short())  # fmt: skip
            return
        self.heard(m)
        if m in self.excluded:
            return
        try:
            if isinstance(msg, AdvertMsg):
                self._on_advert(m, msg)
            elif isinstance(msg, SharesMsg):
                self._on_shares(m, msg)
            elif isinstance(msg, UnmaskMsg):
                self._on_unmask(m, msg)
            else:
                log.warning("secagg %s: %s sent %s to the collector", self.session,
                            self.who(m), msg.TYPE)  # fmt: skip
        finally:
            self.changed.set()

    def _on_advert(self, m: int, msg: AdvertMsg) -> None:
        if self.step is not _Step.ADVERTS or m + 1 in self.core.adverts:
            # members re-send until they hear from us; a late one waits for the result
            log.debug("secagg %s: late or repeated advert from %s", self.session, self.who(m))
            return
        advert = KeyAdvert(m + 1, msg.enc_pk, msg.mask_pk, msg.signature)
        if not verify(self.ids[m], msg.signature, advert.signed_bytes(self.session_bytes)):
            self.exclude(m, STATUS_REJECTED, "key advert signature does not verify "
                         "(forged, or signed for another session or settings)")  # fmt: skip
            return
        try:
            self.core.on_advert(advert)
        except SecAggError as exc:
            self.exclude(m, STATUS_REJECTED, f"bad key advert: {exc}")

    def _on_shares(self, m: int, msg: SharesMsg) -> None:
        if self.step is not _Step.SHARES or m + 1 in self.core.shares:
            log.info("secagg %s: late or repeated shares from %s", self.session, self.who(m))
            return
        want = set(self.core.adverts) - {m + 1}
        if set(msg.blobs) != want:
            # A share missing for one peer would leave that pair's masks uncancelled.
            self.exclude(m, STATUS_MALFORMED, f"shares cover {sorted(msg.blobs)}, "
                         f"not every advertiser {sorted(want)}")  # fmt: skip
            return
        try:
            self.core.on_shares(EncryptedShares(m + 1, dict(msg.blobs)))
        except SecAggError as exc:
            self.exclude(m, STATUS_MALFORMED, f"bad shares: {exc}")

    def _on_unmask(self, m: int, msg: UnmaskMsg) -> None:
        if self.step is not _Step.UNMASK or m + 1 in self.core.unmask:
            log.info("secagg %s: late or repeated unmask from %s", self.session, self.who(m))
            return
        try:
            self.core.on_unmask(CoreUnmaskShares(m + 1, dict(msg.self_mask), dict(msg.mask_key)))
        except SecAggError as exc:
            # Its masked input is in the sum; only its answer is not counted.
            log.warning("secagg %s: unusable unmask shares from %s: %s", self.session,
                        self.who(m), exc)  # fmt: skip

    # ----------------------------------------------------------- bulk streams
    def accept_stream(self, m: int, tag: str, size: int) -> memoryview | None:
        if tag != MASKED_TAG:
            log.warning("secagg %s: %s sent a stream tagged %r", self.session, self.who(m), tag)
            return None
        if (
            self.step is not _Step.MASKED
            or m + 1 not in self.core.shares
            or m in self.excluded
            or m in self._incoming
            or m in self._arrived
            or m + 1 in self.core.masked
        ):
            log.info("secagg %s: masked input from %s not expected now", self.session, self.who(m))
            return None
        if size != self.expected_masked_bytes:
            self.exclude(m, STATUS_REJECTED, f"masked vector of {size} bytes; expected "
                         f"{self.expected_masked_bytes} ({self.k} uint32)")  # fmt: skip
            return None
        buf = bytearray(size)
        self._incoming[m] = buf
        return memoryview(buf)

    def stream_done(self, m: int, tag: str, buf: memoryview) -> None:
        got = self._incoming.pop(m, None)
        if tag == MASKED_TAG and got is not None and m not in self.excluded:
            self._arrived[m] = got
            self.bytes_received += len(got)

    def stream_failed(self, m: int, tag: str, reason: str) -> None:
        if tag == MASKED_TAG and m in self._incoming:
            self.exclude(m, STATUS_STREAM_FAILED, f"masked stream broke off: {reason}")

    def _feed_masked(self, m: int, buf: bytearray) -> None:
        values = torch.from_numpy(np.frombuffer(buf, dtype="<u4").astype(np.int64))
        try:
            self.core.on_masked(MaskedInput(m + 1, values))
        except SecAggError as exc:
            self.exclude(m, STATUS_MALFORMED, f"bad masked input: {exc}")
            return
        if self.keep_received:
            self.received[m] = values

    # ---------------------------------------------------------------- driver
    async def drive(self) -> AllReduceResult:
        loop = asyncio.get_running_loop()
        control_s = self.timeout * CONTROL_WAIT_FRACTION
        others = [m for m in range(self.n) if m != self.idx]
        me = self.idx + 1

        # 1. key adverts
        self.core.on_advert(self.client.advertise())
        await self.wait(lambda: not self.waiting_on(), loop.time() + control_s)
        self._give_up_on(set(self.core.adverts), "no key advert", control_s)
        try:
            adverts = self.core.close_adverts()
        except SecAggError as exc:
            return await self._abort(str(exc))
        self.step = _Step.SHARES
        msg = AdvertsMsg(self.sid, tuple(
            (j, a.enc_pk, a.mask_pk, a.signature) for j, a in sorted(adverts.items())
        ))  # fmt: skip
        self.core.on_shares(self.client.on_adverts(adverts))
        await asyncio.gather(*(self.send(m, msg) for m in others if m + 1 in adverts))

        # 2. encrypted shares
        await self.wait(lambda: not self.waiting_on(), loop.time() + control_s)
        self._give_up_on(set(self.core.shares) | self._not_in(adverts), "no shares", control_s)
        try:
            route = self.core.close_shares()
        except SecAggError as exc:
            return await self._abort(str(exc))
        self.step = _Step.MASKED
        await asyncio.gather(*(
            self.send(m, RoutedMsg(self.sid, route[m + 1])) for m in others if m + 1 in route
        ))  # fmt: skip
        mine = await asyncio.to_thread(self.mask_input, route[me])
        self.core.on_masked(mine)

        # 3. masked inputs (bulk streams)
        start = loop.time()
        await self._collect_masked(start + self.timeout * MASKED_START_FRACTION,
                                   start + self.timeout)  # fmt: skip
        try:
            req = self.core.close_masked()
        except SecAggError as exc:
            return await self._abort(str(exc))
        self.step = _Step.UNMASK
        umsg = UnmaskRequestMsg(self.sid, req.survivors)
        await asyncio.gather(*(self.send(m, umsg) for m in others if m + 1 in req.survivors))
        self.core.on_unmask(self.client.on_unmask_request(req))

        # 4. unmask shares
        await self.wait(lambda: not self.waiting_on(), loop.time() + control_s)
        silent = self.waiting_on()
        for m in silent:
            log.warning("secagg %s: no unmask shares from %s", self.session, self.who(m))
        if len(self.core.unmask) < self.t:  # name them, so the group re-forms without them
            for m in silent:
                why = self.dead.get(m, f"no unmask shares within {control_s:.1f} s")
                self.exclude(m, STATUS_NOT_RECEIVED, why)
        try:
            total = await asyncio.to_thread(self.core.finish)
        except SecAggError as exc:
            return await self._abort(str(exc))
        self.step = _Step.DONE
        return await self._publish(total, req.survivors)

    def _not_in(self, have: Mapping[int, object]) -> set[int]:
        return {m + 1 for m in range(self.n) if m + 1 not in have}

    def _give_up_on(self, have: set[int], what: str, waited: float) -> None:
        for m in range(self.n):
            if m != self.idx and m + 1 not in have and m not in self.excluded:
                if m in self.dead:
                    self.exclude(m, STATUS_UNREACHABLE, self.dead[m])
                else:
                    self.exclude(m, STATUS_NOT_RECEIVED, f"{what} within {waited:.1f} s")

    async def _collect_masked(self, start_by: float, hard: float) -> None:
        loop = asyncio.get_running_loop()
        while self.fatal is None:
            for m in list(self._arrived):
                buf = self._arrived.pop(m)
                await asyncio.to_thread(self._feed_masked, m, buf)
            now = loop.time()
            expected = [m for m in range(self.n) if m != self.idx and m + 1 in self.core.shares]
            for m in expected:
                if m + 1 in self.core.masked or m in self.excluded:
                    continue
                if m in self.dead and m not in self._incoming:
                    self.exclude(m, STATUS_UNREACHABLE, self.dead[m])
                elif now >= hard:
                    self.exclude(
                        m,
                        STATUS_NOT_RECEIVED,
                        f"masked input not complete within {self.timeout:.1f} s",
                    )
                elif now >= start_by and m not in self._incoming:
                    waited = self.timeout * MASKED_START_FRACTION
                    self.exclude(m, STATUS_NOT_RECEIVED, f"no masked input within {waited:.1f} s")
            if all(m + 1 in self.core.masked or m in self.excluded for m in expected):
                return
            self.changed.clear()
            if self._arrived:
                continue
            try:
                wake = hard if now >= start_by else start_by
                async with asyncio.timeout(max(0.0, wake - loop.time())):
                    await self.changed.wait()
            except TimeoutError:
                pass

    async def _publish(self, total: torch.Tensor, survivors: tuple[int, ...]) -> AllReduceResult:
        s, omega = total[: self.numel], float(total[self.numel])
        expect = sum(self.weights[j - 1] for j in survivors) / self.total_w
        tol = len(survivors) * 2.0**-(self.frac) + 1e-6
        if not abs(omega - expect) <= tol:
            # Only a member that masked something else than [x w/W, w/W] gets here.
            return await self._abort(
                f"the unmasked weight {omega:.6g} is not the survivors' {expect:.6g}: "
                "a member masked a corrupted or differently weighted vector"
            )
        avg, payload = await asyncio.to_thread(self._encode_average, s, omega)
        statuses = []
        for m in range(self.n):
            if m + 1 in survivors:
                statuses.append(STATUS_INCLUDED)
            elif m in self.excluded:
                statuses.append(self.excluded[m][0])
            else:
                statuses.append(STATUS_UNREACHABLE if m in self.dead else STATUS_NOT_RECEIVED)
        header = ResultHeader(tuple(statuses), sum(self.weights[j - 1] for j in survivors))
        body: list[Buffer] = [header.encode(), payload]
        targets = [m for m in range(self.n) if m != self.idx and m not in self.dead]
        await asyncio.gather(*(self.send_bulk(m, RESULT_TAG, body) for m in targets))
        log.info("secagg %s: summed %d of %d masked inputs; average sent to %d members",
                 self.session, len(survivors), self.n, len(targets))  # fmt: skip
        return self.result(avg, header)

    def _encode_average(self, s: torch.Tensor, omega: float) -> tuple[torch.Tensor, bytes]:
        """Weighted sum / weight, and the bytes every member gets (worker thread)."""
        avg = (s.double() / omega).to(torch.float32)
        if self.codec == "none":
            return avg, avg.numpy().tobytes()
        payload = bytes(self._int8.encode(avg).payload)
        return self.decode_payload(payload), payload  # we keep exactly what we send

    async def _abort(self, reason: str) -> AllReduceResult:
        missing = sorted(
            m for m in range(self.n) if m != self.idx and (m in self.excluded or m in self.dead)
        )
        log.warning("secagg %s: aborting: %s", self.session, reason)
        msg = AbortMsg(self.sid, reason, tuple(m + 1 for m in missing))
        await asyncio.gather(*(self.send(m, msg) for m in range(self.n)
                               if m != self.idx and m not in self.dead))  # fmt: skip
        raise AllReduceFailed(
            [self.ids[m] for m in missing],
            {self.ids[m]: self.reason_for(m, 0) for m in missing},
            f"secagg {self.session}: {reason}",
        )


class MemberRun(_Run):
    """A member's side (members 1..n-1). The overridable steps (``send_advert``,
    ``send_shares``, ``after_shares``, ``send_masked``) let a test play a misbehaving
    or crashing member; everything else is the protocol."""

    def setup(self) -> None:
        self.inbox: dict[type[Message], Message] = {}
        self.result_buf: bytearray | None = None
        self._result_incoming: bytearray | None = None
        self.bad_result: str | None = None
        self.left_out = False

    def waiting_on(self) -> list[int]:
        return [0]

    def on_message(self, sender: Contact, msg: Message) -> None:
        if sender.peer_id != self.ids[0]:
            log.warning("secagg %s: %s from %s, not the collector; ignored", self.session,
                        msg.TYPE, sender.peer_id.short())  # fmt: skip
            return
        self.heard(0)
        if isinstance(msg, AdvertsMsg | RoutedMsg | UnmaskRequestMsg | AbortMsg):
            self.inbox.setdefault(type(msg), msg)  # the first of each; repeats ignored
        else:
            log.warning("secagg %s: collector sent %s to a member", self.session, msg.TYPE)
        self.changed.set()

    def accept_stream(self, m: int, tag: str, size: int) -> memoryview | None:
        busy = self.result_buf is not None or self._result_incoming is not None
        if m != 0 or tag != RESULT_TAG or busy:
            log.warning("secagg %s: unexpected stream %r from %s", self.session, tag, self.who(m))
            return None
        if size != self.expected_result_bytes:
            self.bad_result = f"result of {size} bytes, expected {self.expected_result_bytes}"
            self.changed.set()
            return None
        self._result_incoming = bytearray(size)
        return memoryview(self._result_incoming)

    def stream_done(self, m: int, tag: str, buf: memoryview) -> None:
        if self._result_incoming is not None:
            self.result_buf, self._result_incoming = self._result_incoming, None
            self.bytes_received += len(self.result_buf)

    def stream_failed(self, m: int, tag: str, reason: str) -> None:
        self._result_incoming = None  # the collector may retry

    # --------------------------------------------------------- overridable steps
    async def send_advert(self, advert: KeyAdvert) -> None:
        await self.send(0, AdvertMsg(self.sid, advert.enc_pk, advert.mask_pk, advert.signature))

    async def send_shares(self, blobs: dict[int, bytes]) -> None:
        await self.send(0, SharesMsg(self.sid, blobs))

    async def after_shares(self) -> None:
        """Called between our shares and our masked input (a test crashes here)."""

    async def send_masked(self, masked: MaskedInput) -> None:
        body = await asyncio.to_thread(ring_bytes, masked)
        await self.send_bulk(0, MASKED_TAG, [body])

    # ---------------------------------------------------------------- driver
    def _fail(self, reason: str, missing: list[int] | None = None) -> AllReduceFailed:
        who = [0] if missing is None else missing
        ids = [self.ids[m] for m in who]
        return AllReduceFailed(ids, {p: reason for p in ids}, f"secagg {self.session}: {reason}")

    async def drive(self) -> AllReduceResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout * MEMBER_WAIT_FACTOR
        advert = self.client.advertise()
        await self.send_advert(advert)
        resend_at = loop.time() + ADVERT_RESEND_S
        while True:
            if self.client.phase is Phase.ADVERTISED and loop.time() >= resend_at:
                # Not answered yet: the collector may not have opened the session, or
                # the connection dropped our message; the collector ignores repeats.
                await self.send_advert(advert)
                resend_at = loop.time() + ADVERT_RESEND_S
            if self.result_buf is not None:
                return await asyncio.to_thread(self._parse_result, self.result_buf)
            if self.bad_result is not None:
                raise self._fail(f"the collector sent an unusable result: {self.bad_result}")
            abort = self.inbox.get(AbortMsg)
            if isinstance(abort, AbortMsg):
                missing = [i - 1 for i in abort.missing if 1 <= i <= self.n]
                raise self._fail(f"collector aborted: {abort.reason}", missing)
            if self.fatal is not None:
                raise self._fail(self.fatal, [])
            if 0 in self.dead:
                raise self._fail(f"collector {self.dead[0]}")
            if loop.time() >= deadline:
                raise self._fail(f"no result from the collector within "
                                 f"{self.timeout * MEMBER_WAIT_FACTOR:.1f} s")  # fmt: skip
            if not self.left_out:
                await self._step()
            self.changed.clear()
            if self._ready():
                continue
            wake = deadline
            if self.client.phase is Phase.ADVERTISED:
                wake = min(wake, resend_at)
            try:
                async with asyncio.timeout(max(0.0, wake - loop.time())):
                    await self.changed.wait()
            except TimeoutError:
                pass

    def _ready(self) -> bool:
        phase = self.client.phase
        want = {Phase.ADVERTISED: AdvertsMsg, Phase.SHARED: RoutedMsg,
                Phase.MASKED: UnmaskRequestMsg}.get(phase)  # fmt: skip
        return (not self.left_out and want is not None and want in self.inbox) or (
            self.result_buf is not None or AbortMsg in self.inbox
        )

    async def _step(self) -> None:
        phase = self.client.phase
        adverts = self.inbox.get(AdvertsMsg)
        if phase is Phase.ADVERTISED and isinstance(adverts, AdvertsMsg):
            ads = {i: KeyAdvert(i, e, mk, s) for i, e, mk, s in adverts.adverts}
            try:
                shares = self.client.on_adverts(ads)
            except SecAggError as exc:
                # The collector checked every signature; a bad one here is its doing.
                raise self._fail(f"collector relayed invalid adverts: {exc}") from None
            await self.send_shares(dict(shares.blobs))
            await self.after_shares()
            return
        routed = self.inbox.get(RoutedMsg)
        if phase is Phase.SHARED and isinstance(routed, RoutedMsg):
            try:
                masked = await asyncio.to_thread(self.mask_input, dict(routed.blobs))
            except SecAggError as exc:
                # e.g. a share that fails authentication: we cannot mask consistently,
                # so we drop out (recovered like a crash) and wait for the result.
                log.warning("secagg %s: leaving this sum: %s", self.session, exc)
                self.left_out = True
                return
            await self.send_masked(masked)
            return
        req = self.inbox.get(UnmaskRequestMsg)
        if phase is Phase.MASKED and isinstance(req, UnmaskRequestMsg):
            try:
                resp = self.client.on_unmask_request(UnmaskRequest(req.survivors))
            except SecAggError as exc:
                raise self._fail(f"collector sent a bad unmask request: {exc}") from None
            await self.send(0, UnmaskMsg(self.sid, resp.self_mask, resp.mask_key))

    def _parse_result(self, buf: bytearray) -> AllReduceResult:
        hb = result_header_bytes(self.n)
        try:
            header = ResultHeader.decode(memoryview(buf)[:hb], self.n)
            if header.statuses[0] != STATUS_INCLUDED or not math.isfinite(header.total_weight):
                raise ValueError("the header leaves the collector out or has a bad weight")
            avg = self.decode_payload(memoryview(buf)[hb:])
        except (ValueError, CompressionError) as exc:
            raise self._fail(f"the collector sent an unusable result: {exc}") from None
        if not all_finite(avg):
            raise self._fail("the collector's average holds NaN/Inf")
        return self.result(avg, header)


async def secure_average(
    host: SecAggHost,
    group: Sequence[Contact],
    session: str,
    flat: torch.Tensor,
    weights: Sequence[float],
    *,
    compression: str = "none",
    timeout_s: float = 60.0,
    clip: float = DEFAULT_CLIP,
    probe_interval_s: float = PROBE_INTERVAL_S,
    member_type: type[MemberRun] = MemberRun,
    collector_type: type[CollectorRun] = CollectorRun,
) -> AllReduceResult:
    """Sample-weighted mean of ``flat`` over ``group`` by secure aggregation.

    Every member gets identical bits. ``session`` must be unique to this attempt and
    the same at every member (the round's all-reduce session works). ``weights[i]`` is
    member i's public weight. Raises ValueError for bad arguments and AllReduceFailed
    when the sum cannot be completed (retry with the survivors under a new session).
    A group of one returns ``flat`` itself (there is nobody to hide it from).
    """
    ids = [c.peer_id for c in group]
    if len(ids) == 1 and ids[0] == host.transport.peer_id:
        w = float(weights[0])
        return AllReduceResult(flat.clone(), w, ids, {}, 0, 0, [w])
    if ids and ids[0] == host.transport.peer_id:
        run: _Run = collector_type(
            host, group, session, flat, weights, compression=compression,
            timeout_s=timeout_s, clip=clip, probe_interval_s=probe_interval_s,
        )  # fmt: skip
    else:
        run = member_type(
            host, group, session, flat, weights, compression=compression,
            timeout_s=timeout_s, clip=clip, probe_interval_s=probe_interval_s,
        )  # fmt: skip
    if run.n == 2:
        log.info(
            "secagg %s: with two members each can work out the other's update from the "
            "average; secure aggregation hides updates only in groups of 3+",
            session,
        )
    return await run.run()
