"""Group all-reduce over bulk streams: reduce-scatter, then all-gather.

Members ``group[0..n-1]`` (sorted by peer id, the same list everywhere) split the flat
fp32 vector into n contiguous shards (shards.py); ``group[j]`` owns shard j.

1. Reduce-scatter. Every member streams its *unweighted* shard j, encoded by the
   codec, to owner j, with its weight and model version in the tag
   (stream_format.py). Owners check every field at announce time (wrong version,
   size, sender index, codec or weight: refused before a byte is buffered), then
   check each payload (int8: scales and codes; fp32: NaN/Inf, see 2).
2. Owner j averages the valid contributions in group order (= peer-id order):
   ``sum_i x_i * fp32(w_i / W)`` with W the sum of included weights, a cache-sized
   block at a time, one fused multiply-add pass per contribution (an int8 payload is
   expanded and scaled by its chunk's ``absmax * w_i / W / 127`` in the same pass).
   Normalising first keeps the sum a convex combination, so it cannot overflow
   (beyond rounding). Only the owner computes its shard and everyone gets its bytes,
   so the result is bit-identical at every member whatever the CPU's rounding of a
   fused multiply-add. A NaN/Inf anywhere makes the mean non-finite, so fp32 inputs
   are scanned only when it is; then the culprits are excluded and the mean
   recomputed. int8 payloads are finite by their checks.
3. All-gather. Owner j encodes the averaged shard once and streams those same bytes,
   behind a header saying whom it included with what weight, to every member, and
   decodes them itself. So every member ends with a bit-identical vector, even with
   lossy int8.

Each member sends and receives about 2 (n-1)/n of the encoded vector. fp32 shards
are sent straight from the caller's tensor, with no copy; ``out=`` lets the caller
supply the output. Transient buffers (incoming contributions and result shards,
int8 payloads) come from a process-wide pool (buffer_pool.py) and go
back to it when the call ends, so the next round finds them already mapped: fresh
memory costs page faults that outweighed the transfers (docs/BENCHMARKS.md).

Faults (what the caller sees):
- A contribution that is malformed, non-finite, from another model version, the
  wrong size, or whose stream carries more or fewer bytes than announced is excluded
  with a logged reason; everyone else finishes. ``AllReduceResult.excluded`` names it.
- A member that does not start streaming within ``timeout_s * REDUCE_AT_FRACTION``
  is excluded from every owner's average (so the other shards still complete).
- A member found dead (three failed sends, or two failed liveness probes while we
  wait on it) or whose own shard never arrives makes the all-reduce fail with
  ``AllReduceFailed(missing=[...])`` once our own owner duties are done; at the
  latest after ``timeout_s``. The caller retries with the survivors under a new
  session id.

Robust aggregation (``aggregator=``, see shoal.aggregation): owner j applies the rule
to the contributions it holds for shard j instead of the weighted mean. Coordinate-wise
rules (median, trimmed mean) need nothing more. Whole-vector rules (Multi-Krum,
centered clipping) ask for sums of small per-shard statistics (distances, norms); each
such sum is a nested all-reduce of that statistic among the same group, session
``<session>/s<k>``, so every owner gets identical bits and makes the same choice. A
member missing from a nested exchange fails the whole all-reduce (AllReduceFailed).

Weak spots, on purpose for now: a lying *owner* can send different averages to
different members (caught afterwards by the model-hash check of the round, not
here); weights are taken as claimed; success is not atomic across members (a member
that dies after sending some of its result shards leaves some members with a result
and others with AllReduceFailed); and int8 error feedback must wrap the whole call.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from shoal.aggregation.base import AggregationError, Aggregator
from shoal.averaging.buffer_pool import POOL
from shoal.averaging.bulk_router import BulkRouter
from shoal.averaging.shards import shard_bounds
from shoal.averaging.stream_format import (
    CODECS,
    MAX_GROUP_SIZE,
    PROBE_TAG,
    STATUS_INCLUDED,
    STATUS_MALFORMED,
    STATUS_NON_FINITE,
    STATUS_NOT_RECEIVED,
    STATUS_REJECTED,
    STATUS_STREAM_FAILED,
    STATUS_TEXT,
    STATUS_UNREACHABLE,
    BadTag,
    ContributionTag,
    ResultHeader,
    ResultTag,
    body_fits,
    header_bytes,
    parse_tag,
    payload_bytes,
    session_prefix,
    shard_align,
)
from shoal.compression import CompressionError, EncodedTensor, NonFiniteTensorError, entropy
from shoal.compression.int4 import Int4Codec
from shoal.compression.int4z import Int4ZCodec
from shoal.compression.int8 import Int8Codec
from shoal.identity.keys import PeerId
from shoal.numerics import all_finite
from shoal.training.diloco_math import (
    NonFiniteUpdateError,
    UpdateRejected,
    WrongShapeError,
    validate_update,
)
from shoal.transport import BulkRejected, Transport, TransportClosed, TransportError
from shoal.wire.contact import Contact

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 5.0
PROBE_FAILURES = 2  # consecutive failed probes before a member counts as dead
SEND_ATTEMPTS = 3  # transport errors (not refusals) before a member counts as dead
REDUCE_AT_FRACTION = 0.5
REDUCE_BLOCK_VALUES = 1 << 19  # the reduce works 2 MiB of fp32 at a time: stays in cache
_BACKOFF_START_S = 0.005
_BACKOFF_MAX_S = 0.25

# One thread runs the arithmetic (codecs, checks, the reduce) of every all-reduce in the
# process, one job after another. Each torch/numpy pass releases and retakes the GIL,
# so jobs running side by side in several threads mostly hand the GIL back and forth:
# three 16 MiB int8 encodes in three threads took ~40% more CPU than the same three in
# one (measured on 2 cores), and the cores are busy with the other peers' work anyway.
# Robust rules that block on nested exchanges get their own thread (see _reduce).
_compute: ThreadPoolExecutor | None = None
_compute_lock = threading.Lock()  # nodes on loops of their own may ask at once


def _compute_thread() -> ThreadPoolExecutor:
    global _compute
    with _compute_lock:
        if _compute is None:
            _compute = ThreadPoolExecutor(1, thread_name_prefix="shoal-allreduce")
        return _compute


def _forget_compute_thread() -> None:
    # A forked child has no copy of the parent's thread: an executor inherited with it
    # would queue jobs that never run.
    global _compute
    _compute = None


os.register_at_fork(after_in_child=_forget_compute_thread)

Buffer = memoryview | bytes | bytearray
# A validated contribution (fp32 values, or an int8 payload that passed its checks and
# is decoded inside the reduce), or None with the exclusion status and reason.
Contribution = torch.Tensor | EncodedTensor
Checked = tuple[Contribution | None, int, str]
T = TypeVar("T")


def _output_buffer(out: torch.Tensor | None, flat: torch.Tensor) -> torch.Tensor:
    """``out`` checked for use as the result of averaging ``flat``, or a new tensor."""
    if out is None:
        return torch.empty(flat.numel(), dtype=torch.float32)
    if (
        out.device.type != "cpu"
        or out.dtype != torch.float32
        or out.dim() != 1
        or not out.is_contiguous()
        or out.numel() != flat.numel()
    ):
        raise ValueError(f"out must be a contiguous 1-D CPU fp32 tensor of {flat.numel()} values")
    a0, a1 = out.data_ptr(), out.data_ptr() + 4 * out.numel()
    b0, b1 = flat.data_ptr(), flat.data_ptr() + 4 * flat.numel()
    if out.numel() and a0 < b1 and b0 < a1:
        # flat is streamed in place while results land in out: they must not share bytes.
        raise ValueError("out must not overlap flat")
    return out


class AllReduceFailed(Exception):
    """The all-reduce cannot complete. Retry with ``survivors`` under a new session."""

    def __init__(self, missing: list[PeerId], reasons: dict[PeerId, str], detail: str = "") -> None:
        self.missing = missing
        self.reasons = reasons
        parts = [f"{p.short()}: {reasons.get(p, '?')}" for p in missing]
        super().__init__(detail or "all-reduce failed; missing " + ", ".join(parts))

    def survivors(self, group: Sequence[Contact]) -> list[Contact]:
        gone = set(self.missing)
        return [c for c in group if c.peer_id not in gone]


@dataclass(frozen=True)
class AllReduceResult:
    average: torch.Tensor  # bit-identical at every member
    total_weight: float  # sum of the contributors' weights
    contributors: list[PeerId]  # included in every shard
    excluded: dict[PeerId, str]  # left out of at least one shard, and why
    bytes_sent: int  # stream payload bytes (no handshake / AEAD overhead)
    bytes_received: int
    shard_weights: list[float] = field(default_factory=list)  # divisor W of each shard


class AllReduce:
    """One member's side of one all-reduce. Also the BulkReceiver of its session.

    ``contribution`` and ``send_stream`` are the two steps a test may override to
    play a misbehaving member; everything else is the protocol.
    """

    def __init__(
        self,
        router: BulkRouter,
        me: Contact,
        group: Sequence[Contact],
        session: str,
        flat: torch.Tensor,
        weight: float,
        *,
        compression: str = "none",
        model_version: int,
        timeout_s: float,
        probe_interval_s: float = PROBE_INTERVAL_S,
        aggregator: Aggregator | None = None,
        out: torch.Tensor | None = None,
    ) -> None:
        self._router = router
        self._aggregator = aggregator  # None: the weighted mean below
        self._exchanges = itertools.count()
        self._transport: Transport = router.transport
        self._group = list(group)
        ids = [c.peer_id for c in self._group]
        if not ids or len(ids) > MAX_GROUP_SIZE:
            raise ValueError(f"group must have 1..{MAX_GROUP_SIZE} members, got {len(ids)}")
        if any(a >= b for a, b in itertools.pairwise(ids)):
            raise ValueError("group must be sorted by peer id, without duplicates")
        if me.peer_id != self._transport.peer_id:
            raise ValueError("`me` is not this transport's peer id")
        if me.peer_id not in ids:
            raise ValueError("`me` is not in the group")
        if compression not in CODECS:
            raise ValueError(f"unknown compression {compression!r}; known: {list(CODECS)}")
        weight = float(weight)
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"weight must be finite and > 0, got {weight!r}")
        if isinstance(model_version, bool) or not isinstance(model_version, int):
            raise ValueError(f"model_version must be an int, got {model_version!r}")
        if model_version < 0:
            raise ValueError(f"model_version must be >= 0, got {model_version}")
        if not timeout_s > 0 or not probe_interval_s > 0:
            raise ValueError("timeout_s and probe_interval_s must be > 0")
        if flat.device.type != "cpu" or not flat.is_contiguous():
            raise ValueError("flat must be a contiguous CPU tensor")
        if compression == "none":
            validate_update(flat, flat.numel(), model_version, model_version)  # 1-D fp32 finite
        self._prefix = session_prefix(session)
        self._session = session
        self._flat = flat
        self._weight = weight
        self._codec = compression
        self._version = model_version
        self._timeout = timeout_s
        self._probe_interval = probe_interval_s
        self._numel = flat.numel()
        self._n = len(ids)
        self._idx = ids.index(me.peer_id)
        self._index = {p: i for i, p in enumerate(ids)}
        self._bounds = shard_bounds(self._numel, self._n, shard_align(compression))
        if compression != "none":
            # Only our own shard, which the reduce uses as it is, is scanned here: the
            # int8 encoder finds NaN/Inf in each shard it encodes for free (a chunk's
            # scale comes out non-finite), and run() encodes them all before sending
            # any. That saves a pass over 3/4 of the vector per call.
            if flat.dim() != 1 or flat.dtype != torch.float32:
                raise WrongShapeError(
                    f"update of shape {tuple(flat.shape)} {flat.dtype}; expected flat fp32"
                )
            lo, hi = self._bounds[self._idx]
            validate_update(flat[lo:hi], hi - lo, model_version, model_version)
        self._out = _output_buffer(out, flat)
        # int8 and int4 share one interface (check, decode, accumulate_range, encode with
        # roundtrip); everything below is the same for both. int4z is int4 whose bodies
        # are entropy frames (`_wire`): unpacked to the int4 payload on arrival, packed
        # from it just before sending, so nothing else sees the difference.
        quant = {"int4": Int4Codec, "int4z": Int4ZCodec}.get(compression, Int8Codec)
        self._quant: Int8Codec | Int4Codec = quant()
        self._wire = self._quant.entropy_coded
        # owner side: contributions to our shard
        self._incoming: dict[int, tuple[bytearray, float]] = {}  # stream accepted, not done
        self._arrived: dict[int, tuple[bytearray, float]] = {}
        self._excluded: dict[int, tuple[int, str]] = {}
        self._reduced = False
        self._shard_payload: list[Buffer] = []
        # member side: averaged shards
        self._result_incoming: dict[int, bytearray] = {}
        self._result_arrived: dict[int, bytearray] = {}  # left for the driver to decode
        # Decoding starts as each stream completes, in worker threads, so it overlaps
        # the other transfers instead of queueing behind the reduce.
        self._tg: asyncio.TaskGroup | None = None
        self._checks: dict[int, asyncio.Task[Checked]] = {}  # contribution decodes
        self._result_decodes: dict[int, asyncio.Task[None]] = {}
        self._headers: dict[int, ResultHeader] = {}
        self._bad_owner: dict[int, str] = {}
        # Pooled buffers (buffer_pool.py) this all-reduce is done with; given back to the
        # pool at the end unless a worker thread we started might still touch them.
        self._recycle: list[bytearray] = []
        self._workers: set[asyncio.Future[Any]] = set()
        # liveness
        self._heard_from: set[int] = set()
        self._dead: dict[int, str] = {}
        self._probe_failures: dict[int, int] = {}
        self._last_alive: dict[int, float] = {}  # loop time we last heard from each member
        self._sending: dict[int, int] = {}  # streams to each member in flight
        self._stopping = False
        self._probing = False
        self._fatal: str | None = None
        self._changed = asyncio.Event()
        self.bytes_sent = 0
        self.bytes_received = 0

    # ------------------------------------------------------------------ helpers

    def _who(self, m: int) -> str:
        return f"{self._group[m].peer_id.short()} (member {m})"

    def _shard_len(self, j: int) -> int:
        lo, hi = self._bounds[j]
        return hi - lo

    def _resolved(self, m: int) -> bool:
        return m == self._idx or m in self._arrived or m in self._excluded

    def _exclude(self, m: int, status: int, reason: str) -> None:
        if self._reduced or m == self._idx or m in self._arrived or m in self._excluded:
            return
        self._excluded[m] = (status, reason)
        self._incoming.pop(m, None)
        log.warning("all-reduce %s: excluding %s: %s", self._session, self._who(m), reason)
        self._changed.set()

    def _mark_dead(self, m: int, reason: str) -> None:
        if m in self._dead:
            return
        self._dead[m] = f"unreachable: {reason}"
        log.warning("all-reduce %s: %s is unreachable: %s", self._session, self._who(m), reason)
        self._exclude(m, STATUS_UNREACHABLE, self._dead[m])
        self._changed.set()

    def _alive(self, m: int) -> None:
        self._last_alive[m] = asyncio.get_running_loop().time()
        self._probe_failures.pop(m, None)

    # ------------------------------------------------------- BulkReceiver side

    def accept(self, sender: Contact, tag: str, size: int) -> memoryview | None:
        m = self._index.get(sender.peer_id)
        if m is None or m == self._idx:
            log.warning("all-reduce %s: refusing %r from non-member %s", self._session, tag, sender)
            return None
        if tag.startswith("s") and self._aggregator is not None:
            return None  # a nested exchange we have not joined yet; the sender retries
        try:
            parsed = parse_tag(tag)
        except BadTag as exc:
            if tag.startswith("c/"):
                self._exclude(m, STATUS_REJECTED, str(exc))
            else:
                log.warning("all-reduce %s: %s sent %s", self._session, self._who(m), exc)
            return None
        self._heard_from.add(m)
        self._alive(m)
        if parsed == PROBE_TAG:
            return memoryview(bytearray(0)) if size == 0 else None
        if isinstance(parsed, ContributionTag):
            return self._accept_contribution(m, parsed, size)
        assert isinstance(parsed, ResultTag)
        return self._accept_result(m, parsed, size)

    def _accept_contribution(self, m: int, t: ContributionTag, size: int) -> memoryview | None:
        if self._resolved(m) or m in self._incoming or self._reduced:
            return None  # duplicate, or too late: our decision about m is final
        k = self._shard_len(self._idx)
        problem = ""
        if t.sender != m:
            problem = f"claims member index {t.sender} but is member {m}"
        elif t.shard != self._idx:
            problem = f"sent shard {t.shard} to the owner of shard {self._idx}"
        elif t.version != self._version:
            kind = "stale" if t.version < self._version else "future"
            problem = f"{kind} model version {t.version}; this all-reduce is at {self._version}"
        elif t.numel != self._numel:
            problem = f"wrong size: vector of {t.numel} values, expected {self._numel}"
        elif t.codec != self._codec:
            problem = f"codec {t.codec!r}, expected {self._codec!r}"
        elif not body_fits(self._codec, k, size):
            need = payload_bytes(self._codec, k)
            problem = f"wrong size: announced {size} bytes, the shard needs {need}"
            if self._wire:
                problem += f" ({entropy.max_frame_size(need)} at most, entropy-coded)"
        if problem:
            self._exclude(m, STATUS_REJECTED, problem)
            return None
        buf = POOL.take(size)  # stale bytes: the stream overwrites all before delivery
        self._incoming[m] = (buf, t.weight)
        return memoryview(buf)

    def _accept_result(self, m: int, t: ResultTag, size: int) -> memoryview | None:
        j = t.shard
        if j != m or j == self._idx:
            log.warning("all-reduce %s: %s sent result shard %d", self._session, self._who(m), j)
            return None
        if (
            j in self._headers
            or j in self._result_incoming
            or j in self._result_arrived
            or j in self._result_decodes
        ):
            return None
        hb, k = header_bytes(self._n), self._shard_len(j)
        if (t.version, t.numel, t.codec) != (self._version, self._numel, self._codec):
            reason = f"result tag {t} does not match this all-reduce"
        elif size < hb or not body_fits(self._codec, k, size - hb):
            reason = f"result of {size} bytes, expected {hb + payload_bytes(self._codec, k)}"
        else:
            buf = POOL.take(size)
            self._result_incoming[j] = buf
            return memoryview(buf)
        self._bad_owner.setdefault(j, reason)
        log.warning("all-reduce %s: owner %s: %s", self._session, self._who(j), reason)
        self._changed.set()
        return None

    def on_complete(self, sender: Contact, tag: str, buf: memoryview) -> None:
        m = self._index.get(sender.peer_id)
        if m is None:
            return
        if tag.startswith("c/"):
            entry = self._incoming.pop(m, None)
            if entry is not None and not self._resolved(m) and not self._reduced:
                self._arrived[m] = entry
                self.bytes_received += len(entry[0])
                if self._tg is not None and self._aggregator is not None:
                    # A rule needs whole, checked vectors: decode as each lands. The
                    # weighted mean checks each inside the reduce instead.
                    k = self._shard_len(self._idx)
                    work = self._in_thread(self._check_contribution_sync, entry[0], k)
                    self._checks[m] = self._tg.create_task(work)
            elif entry is not None:
                self._recycle.append(entry[0])  # too late to count; its stream is over
        elif tag.startswith("r/"):
            res = self._result_incoming.pop(m, None)
            if res is not None:
                self.bytes_received += len(res)
                if self._tg is not None:
                    self._result_decodes[m] = self._tg.create_task(self._decode_result(m, res))
                else:
                    self._result_arrived[m] = res
        self._changed.set()

    def on_failed(self, sender: Contact, tag: str, reason: str) -> None:
        m = self._index.get(sender.peer_id)
        if m is None:
            return
        if tag.startswith("c/") and m in self._incoming:
            self._recycle.append(self._incoming[m][0])  # its stream thread has ended
            self._exclude(m, STATUS_STREAM_FAILED, f"stream failed: {reason}")
        elif tag.startswith("r/"):
            res = self._result_incoming.pop(m, None)  # the owner may retry
            if res is not None:
                self._recycle.append(res)
        self._changed.set()

    # ------------------------------------------------------- overridable steps

    async def contribution(self, owner: int) -> tuple[str, list[Buffer]]:
        """Session-relative tag and body of our contribution to shard ``owner``."""
        lo, hi = self._bounds[owner]
        x = self._flat[lo:hi]
        tag = ContributionTag(
            self._idx, owner, self._version, self._numel, self._codec, self._weight
        ).encode()
        if self._codec == "none":
            return tag, [x.numpy().data]  # zero-copy: streamed from the caller's tensor
        payload = POOL.take(payload_bytes(self._codec, hi - lo))
        self._recycle.append(payload)  # read by our send, which ends before run() does
        body = await self._in_thread(self._encode_body, x, payload)
        return tag, [body]

    def _encode_body(self, x: torch.Tensor, payload: bytearray) -> Buffer:
        """``x`` encoded into ``payload``, and what goes on the wire for it (worker)."""
        self._quant.encode(x, payload)
        return entropy.pack(payload) if self._wire else payload

    async def send_stream(self, to: int, tag: str, buffers: list[Buffer]) -> None:
        await self._transport.send_bulk(self._group[to], self._prefix + tag, buffers)

    # ---------------------------------------------------------------- sending

    async def _deliver(self, m: int, tag: str, buffers: list[Buffer], deadline: float) -> None:
        """Send with retries. Refusals are retried until ``m`` has shown it is in the
        session (before that it may just not have started); transport errors
        SEND_ATTEMPTS times, after which ``m`` counts as dead."""
        loop = asyncio.get_running_loop()
        size = sum(memoryview(b).nbytes for b in buffers)
        backoff = _BACKOFF_START_S
        failures = 0
        while m not in self._dead:
            self._sending[m] = self._sending.get(m, 0) + 1
            # Judge a refusal by what we knew when we sent: m may refuse before it has
            # joined the session and then join (and be heard from) before the refusal
            # reaches us. Taking that refusal as final lost m's shard for the whole
            # timeout (seen on the wan testbed once kept connections made sends instant).
            in_session = m in self._heard_from
            try:
                await self.send_stream(m, tag, buffers)
                self.bytes_sent += size
                self._alive(m)
                return
            except BulkRejected as exc:
                self._alive(m)
                if in_session:
                    log.info(
                        "all-reduce %s: %s refused %s: %s", self._session, self._who(m), tag, exc
                    )
                    return
            except TransportClosed as exc:
                self._fatal = f"our transport closed: {exc}"
                self._changed.set()
                return
            except TransportError as exc:
                failures += 1
                if failures >= SEND_ATTEMPTS:
                    self._mark_dead(m, f"{type(exc).__name__}: {exc}")
                    return
            finally:
                self._sending[m] -= 1
            if loop.time() + backoff >= deadline:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    async def _prepare_contributions(self) -> dict[int, tuple[str, list[Buffer]]]:
        """Our contribution to every other owner, all encoded before any is sent: an
        int8 encode is where a NaN/Inf outside our own shard shows (see __init__), and
        such a vector must fail the call (ValueError) before any owner got part of it."""
        owners = [j for j in range(self._n) if j != self._idx]
        got = await asyncio.gather(*(self.contribution(j) for j in owners), return_exceptions=True)
        for r in got:
            if isinstance(r, NonFiniteTensorError):
                raise NonFiniteUpdateError(f"flat holds NaN/Inf: {r}") from r
        out: dict[int, tuple[str, list[Buffer]]] = {}
        for j, r in zip(owners, got, strict=True):
            if isinstance(r, BaseException):
                raise r
            out[j] = r
        return out

    async def _send_result(self, m: int, deadline: float) -> None:
        tag = ResultTag(self._idx, self._version, self._numel, self._codec).encode()
        try:
            await self._deliver(m, tag, self._shard_payload, deadline)
        finally:
            self._changed.set()  # the driver waits for our owner duties to finish

    # --------------------------------------------------------------- liveness

    def _waiting_on(self) -> list[int]:
        """Members we still need something from, have no stream in flight with either
        way, and have not heard from for a probe interval."""
        need = set()
        now = asyncio.get_running_loop().time()
        for j in range(self._n):
            if j == self._idx or j in self._dead or j in self._bad_owner:
                continue
            recent = now - self._last_alive.get(j, -1e9) < self._probe_interval
            if self._sending.get(j, 0) or recent:
                continue
            if (
                j not in self._headers
                and j not in self._result_incoming
                and (j not in self._result_arrived)
                and (j not in self._result_decodes)
            ):
                need.add(j)
            if not self._reduced and not self._resolved(j) and j not in self._incoming:
                need.add(j)
        return sorted(need)

    async def _probe(self, m: int, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._transport.send_bulk(self._group[m], self._prefix + PROBE_TAG, [])
        except BulkRejected:
            pass  # it answered: alive (not in, or already done with, this session)
        except TransportClosed as exc:
            self._fatal = f"our transport closed: {exc}"
            self._changed.set()
            return
        except (TransportError, TimeoutError) as exc:
            n = self._probe_failures.get(m, 0) + 1
            self._probe_failures[m] = n
            if n >= PROBE_FAILURES:
                self._mark_dead(m, f"{n} liveness probes failed, last: {type(exc).__name__} {exc}")
            return
        self._alive(m)

    async def _probe_loop(self) -> None:
        """Probe the members we wait on. Stops between rounds once ``_stopping`` is
        set, so a finished all-reduce never cuts a probe stream off mid-way (which
        the other side would log as a misbehaving peer)."""
        timeout = max(2.0, 2 * self._probe_interval)
        while not self._stopping:
            await asyncio.sleep(self._probe_interval)
            targets = [] if self._stopping else self._waiting_on()
            if targets:
                self._probing = True
                try:
                    await asyncio.gather(*(self._probe(m, timeout) for m in targets))
                finally:
                    self._probing = False

    # ------------------------------------------------------------ arithmetic

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the compute thread. Unlike to_thread, a cancelled caller still
        waits for the job, and ``_workers`` shows whether any job we started is still
        pending or running, so pooled buffers are only given back once none can touch
        them."""
        fut = asyncio.get_running_loop().run_in_executor(_compute_thread(), fn, *args)
        self._workers.add(fut)
        fut.add_done_callback(self._workers.discard)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            await asyncio.wait([fut])
            raise

    def _unpacked(self, frame: Buffer, k: int) -> bytearray:
        """The payload of ``k`` values an untrusted entropy frame rebuilds to, in a pooled
        buffer recycled when the call ends (worker thread). MalformedEncodingError if
        it does not rebuild to exactly that size."""
        raw = POOL.take(payload_bytes(self._codec, k))
        self._recycle.append(raw)  # list.append is atomic; read on the loop later
        entropy.unpack_into(frame, raw)
        return raw

    def _decode_into(self, payload: Buffer, out: torch.Tensor) -> None:
        """Decode ``out.numel()`` floats into ``out`` (untrusted bytes; sizes were checked
        at accept). On error ``out`` holds junk."""
        values = out.numel()
        if values == 0:
            return
        if self._codec == "none":
            out.copy_(torch.frombuffer(payload, dtype=torch.float32, count=values))
            return
        enc = EncodedTensor(self._codec, (values,), payload, chunk_size=self._quant.chunk_size)
        self._quant.decode(enc, out=out)

    def _check_contribution_sync(self, buf: bytearray, k: int, *, scan: bool = True) -> Checked:
        """Validate one contribution (worker thread): (value, 0, "") or (None, status,
        reason). fp32 values are a view of ``buf``; ``scan=False`` skips their NaN/Inf
        scan (the weighted mean checks its result instead, see `_reduce_sync`). An int8
        payload is only checked and is decoded a block at a time inside the mean (no
        shard-sized fp32 copy); a robust aggregator needs whole vectors, so for it the
        payload is decoded into a pooled buffer, recycled when the all-reduce ends.
        int8 needs no NaN/Inf scan: a payload whose scales are finite and >= 0 and whose
        codes are in [-127, 127] decodes to |value| <= its chunk's scale."""
        x: Contribution
        try:
            if self._wire:
                buf = self._unpacked(buf, k)
            if self._codec == "none" or k == 0:
                x = torch.frombuffer(buf, dtype=torch.float32, count=k) if k else torch.empty(0)
                if scan:
                    validate_update(x, k, self._version, self._version)
            elif self._aggregator is None:
                x = EncodedTensor(self._codec, (k,), buf, chunk_size=self._quant.chunk_size)
                self._quant.check(x)
            else:
                x, floats = POOL.take_floats(k)
                self._recycle.append(floats)  # list.append is atomic; read on the loop later
                self._decode_into(buf, x)
        except (NonFiniteUpdateError, NonFiniteTensorError) as exc:
            return None, STATUS_NON_FINITE, f"{type(exc).__name__}: {exc}"
        except (CompressionError, UpdateRejected) as exc:
            return None, STATUS_MALFORMED, f"{type(exc).__name__}: {exc}"
        return x, 0, ""

    def _weighted_mean(
        self, acc: torch.Tensor, parts: list[tuple[Contribution, float]]
    ) -> tuple[float, bool]:
        """acc = sum_i x_i * fp32(w_i / W) in the order given; returns W and whether
        acc came out finite (always, for int8: see `_finish_shard` for overflow).

        w / W in float64, one rounding to fp32, as diloco_math.weighted_average. Done a
        cache-sized block at a time, one pass per contribution: the first writes the
        block, the others are fused multiply-adds into it (an int8 payload is expanded
        and scaled right there, see Int8Codec.accumulate_range). The fp32 NaN/Inf check
        runs on each block while it is still in cache.
        """
        finite = True
        total = sum(w for _, w in parts)
        k = acc.numel()
        # fp32(w / W) as Python floats: torch takes a float scalar at fp32 exactly.
        scales = [float(torch.tensor(w / total, dtype=torch.float32)) for _, w in parts]
        scan = self._codec == "none"
        tmp = None
        if any(not isinstance(x, torch.Tensor) for x, _ in parts):
            tmp = torch.empty(min(k, REDUCE_BLOCK_VALUES), dtype=torch.float32)
        for b0 in range(0, k, REDUCE_BLOCK_VALUES):
            b1 = min(k, b0 + REDUCE_BLOCK_VALUES)
            block = acc[b0:b1]
            for i, ((x, _), scale) in enumerate(zip(parts, scales, strict=True)):
                if isinstance(x, torch.Tensor):
                    if i == 0:
                        torch.mul(x[b0:b1], scale, out=block)
                    else:
                        block.add_(x[b0:b1], alpha=scale)
                else:
                    assert tmp is not None
                    self._quant.accumulate_range(x, b0, b1, scale, block, tmp, first=i == 0)
            if scan:
                finite = finite and all_finite(block)
        return total, finite

    def _reduce_sync(
        self,
        arrived: dict[int, tuple[bytearray, float]],
        checked: dict[int, Checked],
        global_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[list[tuple[int, int, str]], list[float], float]:
        """Average our shard into ``self._out`` (worker thread). Returns the members
        rejected while checking, the weight used per member, and the divisor."""
        lo, hi = self._bounds[self._idx]
        k = hi - lo
        acc = self._out[lo:hi]
        robust = self._aggregator is not None and global_sum is not None
        values: dict[int, tuple[Contribution, float]] = {}
        rejected: list[tuple[int, int, str]] = []
        for m in range(self._n):  # group order = peer-id order: a fixed summation order
            if m == self._idx:
                values[m] = (self._flat[lo:hi], self._weight)  # checked finite at the start
            elif m in arrived:
                buf, w = arrived[m]
                got = checked.get(m) or self._check_contribution_sync(buf, k, scan=robust)
                if got[0] is None:
                    rejected.append((m, got[1], got[2]))
                else:
                    values[m] = (got[0], w)
        if self._aggregator is not None and global_sum is not None:
            by_member: list[torch.Tensor | None] = [None] * self._n
            weights = [0.0] * self._n
            for m, (x, w) in values.items():
                assert isinstance(x, torch.Tensor)  # decoded for the rule by the check
                by_member[m], weights[m] = x, w
            acc.copy_(self._aggregator.aggregate(by_member, weights, global_sum))
            total = sum(weights)
            finite = all_finite(acc)
            del by_member
        else:
            total, finite = self._weighted_mean(acc, list(values.values()))
            if not finite:
                # A NaN/Inf anywhere makes the mean non-finite (every scale is > 0 or
                # gives NaN), so the fp32 contributions' NaN/Inf scans wait until here:
                # only now, rarely, find the culprits and average again without them.
                bad = [
                    m
                    for m, (x, _) in values.items()
                    if m != self._idx and isinstance(x, torch.Tensor) and not all_finite(x)
                ]
                for m in bad:
                    x = values.pop(m)[0]
                    assert isinstance(x, torch.Tensor)
                    n_bad = int((~torch.isfinite(x)).sum())
                    reason = f"NonFiniteUpdateError: update holds {n_bad} NaN/Inf value(s)"
                    rejected.append((m, STATUS_NON_FINITE, reason))
                if bad:
                    total, finite = self._weighted_mean(acc, list(values.values()))
            weights = [0.0] * self._n
            for m, (_, w) in values.items():
                weights[m] = w
        del values
        if not finite:
            raise CompressionError("averaged shard overflowed fp32")
        self._finish_shard(acc)
        return rejected, weights, total

    def _finish_shard(self, acc: torch.Tensor) -> None:
        """What our result streams send: the averaged shard (encoded for int8)."""
        k = acc.numel()
        if self._codec == "none":
            self._shard_payload = [acc.numpy().data] if k else []
        else:
            payload = POOL.take(payload_bytes(self._codec, k))
            self._recycle.append(payload)  # read by our result sends, over before run() ends
            # The owner keeps what it sends: acc becomes decode(payload), bit for bit.
            try:
                self._quant.encode(acc, out=payload, roundtrip=acc)
            except NonFiniteTensorError:  # the int8 mean is not scanned: it shows here
                raise CompressionError("averaged shard overflowed fp32") from None
            self._shard_payload = [entropy.pack(payload) if self._wire else payload]

    async def _reduce(self) -> float:
        self._reduced = True  # from here on, accept() refuses contributions
        arrived, self._arrived = self._arrived, {}
        checks, self._checks = self._checks, {}
        checked = {m: await t for m, t in checks.items() if m in arrived}
        loop = asyncio.get_running_loop()

        def global_sum(stats: torch.Tensor) -> torch.Tensor:
            # Called from the reduce worker thread; the nested all-reduce runs on the loop.
            return asyncio.run_coroutine_threadsafe(self._sum_over_group(stats), loop).result()

        try:
            if self._aggregator is not None and self._aggregator.needs_global_stats:
                # Its own thread: it blocks on nested all-reduces, whose decodes need the
                # compute thread free (in it, the first such rule would deadlock).
                with ThreadPoolExecutor(1, thread_name_prefix="shoal-aggregate") as pool:
                    work = functools.partial(self._reduce_sync, arrived, checked, global_sum)
                    rejected, weights, total = await loop.run_in_executor(pool, work)
            else:
                rejected, weights, total = await self._in_thread(
                    self._reduce_sync, arrived, checked, global_sum
                )
        finally:
            self._recycle.extend(buf for buf, _ in arrived.values())
        del arrived, checked
        for m, status, reason in rejected:
            self._excluded[m] = (status, reason)
            log.warning("all-reduce %s: excluding %s: %s", self._session, self._who(m), reason)
        statuses = [
            STATUS_INCLUDED if weights[m] > 0 else STATUS_NOT_RECEIVED for m in range(self._n)
        ]
        for m, (status, _) in self._excluded.items():
            statuses[m] = status
        header = ResultHeader(tuple(statuses), tuple(weights))
        self._headers[self._idx] = header
        self._shard_payload.insert(0, header.encode())
        return total

    async def _sum_over_group(self, stats: torch.Tensor) -> torch.Tensor:
        """Sum of every member's ``stats`` (a small fp32 vector), identical bits everywhere:
        a nested all-reduce with equal weights, scaled back up by the group size."""
        job = AllReduce(
            self._router, self._group[self._idx], self._group,
            f"{self._session}/s{next(self._exchanges)}",
            stats.to(torch.float32).reshape(-1).contiguous(), 1.0,
            compression="none", model_version=self._version,
            timeout_s=self._timeout, probe_interval_s=self._probe_interval,
        )  # fmt: skip
        res = await job.run()
        if len(res.contributors) != self._n:
            ids = [c.peer_id for c in self._group]
            gone = [p for p in ids if p not in res.contributors]
            raise AllReduceFailed(gone, res.excluded, "a member left a robust-aggregation exchange")
        total = res.average * torch.tensor(float(self._n), dtype=torch.float32)
        return total.reshape(stats.shape)

    async def _decode_result(self, j: int, buf: bytearray) -> None:
        try:
            self._headers[j] = await self._in_thread(self._decode_result_sync, j, buf)
        except (ValueError, CompressionError) as exc:
            self._bad_owner[j] = f"sent an unusable averaged shard: {exc}"
            log.warning("all-reduce %s: owner %s %s", self._session, self._who(j), exc)
        finally:
            self._recycle.append(buf)
            self._result_decodes.pop(j, None)
            self._changed.set()

    def _decode_result_sync(self, j: int, buf: bytearray) -> ResultHeader:
        """Check owner j's header and decode its shard straight into ``self._out``."""
        hb = header_bytes(self._n)
        view = memoryview(buf)
        header = ResultHeader.decode(view[:hb], self._n)
        if header.statuses[j] != STATUS_INCLUDED:
            raise ValueError("the owner left its own contribution out")
        lo, hi = self._bounds[j]
        if self._codec == "none" and hi > lo:
            # Checked a block at a time and copied while that block is in cache (one
            # read of the receive buffer, not two). A bad shard fails the all-reduce,
            # so what it left in the output is never used.
            x = torch.frombuffer(buf, dtype=torch.float32, count=hi - lo, offset=hb)
            dst = self._out[lo:hi]
            for b0 in range(0, hi - lo, REDUCE_BLOCK_VALUES):
                b1 = min(hi - lo, b0 + REDUCE_BLOCK_VALUES)
                if not all_finite(x[b0:b1]):
                    raise ValueError("averaged shard holds NaN/Inf")
                dst[b0:b1].copy_(x[b0:b1])
        else:
            # int8 decodes only finite values (scales are checked, |code| <= 127); a
            # malformed payload fails this owner's shard, so what it left is unused.
            body: Buffer = view[hb:]
            if self._wire:
                body = self._unpacked(body, hi - lo)
            self._decode_into(body, self._out[lo:hi])
        return header

    # ---------------------------------------------------------------- driver

    async def run(self) -> AllReduceResult:
        self._router.register(self._prefix, self)
        try:
            outcome = await self._drive()
        finally:
            self._router.unregister(self._prefix)
            self._give_back_buffers()
        if isinstance(outcome, AllReduceFailed):
            raise outcome
        return outcome

    def _give_back_buffers(self) -> None:
        """Pool the buffers we are done with, unless a worker thread of ours still runs
        (then they are left to the garbage collector). Buffers of streams still in flight
        were never put in ``_recycle``."""
        recycle, self._recycle = self._recycle, []
        self._shard_payload = []
        if any(not f.done() for f in self._workers):
            return
        for buf in recycle:
            POOL.give(buf)

    async def _drive(self) -> AllReduceResult | AllReduceFailed:
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self._timeout
        reduce_at = start + self._timeout * REDUCE_AT_FRACTION
        sends: dict[int, asyncio.Task[None]] = {}
        result_sends: dict[int, asyncio.Task[None]] = {}
        contributions = await self._prepare_contributions()
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for j, (tag, buffers) in contributions.items():
                sends[j] = tg.create_task(self._deliver(j, tag, buffers, deadline))
            prober = tg.create_task(self._probe_loop())
            try:
                while True:
                    self._changed.clear()
                    outcome = await self._step(
                        tg, sends, result_sends, loop.time(), reduce_at, deadline
                    )
                    if outcome is not None:
                        self._stopping = True
                        if self._probing:  # let a probe round in flight finish
                            await asyncio.wait([prober], timeout=self._probe_interval + 2.0)
                        return outcome
                    wake = deadline if self._reduced else min(reduce_at, deadline)
                    try:
                        async with asyncio.timeout(max(0.0, wake - loop.time())):
                            await self._changed.wait()
                    except TimeoutError:
                        pass
            finally:
                self._tg = None
                for t in [*sends.values(), *result_sends.values(), prober]:
                    t.cancel()

    async def _step(
        self,
        tg: asyncio.TaskGroup,
        sends: dict[int, asyncio.Task[None]],
        result_sends: dict[int, asyncio.Task[None]],
        now: float,
        reduce_at: float,
        deadline: float,
    ) -> AllReduceResult | AllReduceFailed | None:
        if self._fatal is not None:
            return AllReduceFailed([], {}, f"all-reduce {self._session}: {self._fatal}")
        if not self._reduced:
            if now >= reduce_at:
                for m in range(self._n):
                    if not self._resolved(m) and m not in self._incoming:
                        waited = self._timeout * REDUCE_AT_FRACTION
                        self._exclude(
                            m, STATUS_NOT_RECEIVED, f"no contribution within {waited:.1f} s"
                        )
            if all(self._resolved(m) for m in range(self._n)):
                try:
                    await self._reduce()
                except AllReduceFailed as exc:  # a nested exchange of a robust aggregator
                    self._fatal = str(exc)
                    return exc
                except (CompressionError, AggregationError) as exc:
                    self._fatal = str(exc)
                    return AllReduceFailed([], {}, f"all-reduce {self._session}: {exc}")
                for m in range(self._n):
                    if m != self._idx and m not in self._dead:
                        result_sends[m] = tg.create_task(self._send_result(m, deadline))
        for j in list(self._result_arrived):
            await self._decode_result(j, self._result_arrived.pop(j))
        for j, task in sends.items():
            if j in self._headers and not task.done():
                task.cancel()  # its shard is done; our contribution no longer matters
        duties_done = self._reduced and all(t.done() for t in result_sends.values())
        if len(self._headers) == self._n and duties_done:
            return self._result()
        lost = {j: r for j, r in self._dead.items() if j not in self._headers}
        lost.update(self._bad_owner)
        if lost and duties_done:
            return self._failure(lost)
        if now >= deadline:
            missing = dict(lost)
            for j in range(self._n):
                if j != self._idx and j not in self._headers:
                    missing.setdefault(j, f"no averaged shard within {self._timeout:.1f} s")
                if not self._reduced and not self._resolved(j):
                    missing.setdefault(j, f"no contribution within {self._timeout:.1f} s")
            return self._failure(missing)
        return None

    def _failure(self, lost: dict[int, str]) -> AllReduceFailed:
        missing = [self._group[j].peer_id for j in sorted(lost)]
        reasons = {self._group[j].peer_id: r for j, r in lost.items()}
        return AllReduceFailed(missing, reasons)

    def _result(self) -> AllReduceResult:
        ids = [c.peer_id for c in self._group]
        shards = sorted(self._headers)
        contributors = [
            ids[m]
            for m in range(self._n)
            if all(self._headers[j].statuses[m] == STATUS_INCLUDED for j in shards)
        ]
        excluded: dict[PeerId, str] = {}
        for m in range(self._n):
            reasons = []
            if m in self._excluded:
                reasons.append(self._excluded[m][1])  # our own, detailed reason first
            for j in shards:
                s = self._headers[j].statuses[m]
                if s != STATUS_INCLUDED and j != self._idx:
                    reasons.append(f"shard {j} ({ids[j].short()}): {STATUS_TEXT[s]}")
            if reasons:
                excluded[ids[m]] = "; ".join(reasons)
        first = self._headers[shards[0]]
        total = sum(first.weights[self._index[p]] for p in contributors)
        shard_weights = [sum(self._headers[j].weights) for j in shards]
        return AllReduceResult(
            average=self._out,
            total_weight=total,
            contributors=contributors,
            excluded=excluded,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            shard_weights=shard_weights,
        )


async def all_reduce(
    router: BulkRouter | Transport,
    me: Contact,
    group: Sequence[Contact],
    session: str,
    flat: torch.Tensor,
    weight: float,
    *,
    compression: str = "none",
    model_version: int,
    timeout_s: float,
    probe_interval_s: float = PROBE_INTERVAL_S,
    aggregator: Aggregator | None = None,
    out: torch.Tensor | None = None,
) -> AllReduceResult:
    """Weighted average of ``flat`` across ``group``; every member gets identical bits.

    ``group`` is the same list, sorted by peer id, at every member, and includes
    ``me``; ``session`` is unique to this attempt (e.g. f"{run}/r{round}/g{g}/a{try}").
    ``flat`` (1-D fp32, contiguous, finite) must not change until this returns.
    ``aggregator`` replaces the weighted mean by a robust rule (shoal.aggregation).
    ``out`` (1-D fp32 contiguous, same length, not overlapping ``flat``) receives the
    average instead of a new tensor: a caller that averages every round reuses one
    buffer, as an in-place collective does (a fresh 64 MiB output costs ~40 ms of page
    faults here). It holds junk if the all-reduce fails.
    Raises ValueError for bad arguments and AllReduceFailed if members are missing.
    """
    if isinstance(router, Transport):
        router = BulkRouter.attach(router)
    job = AllReduce(
        router,
        me,
        group,
        session,
        flat,
        weight,
        compression=compression,
        model_version=model_version,
        timeout_s=timeout_s,
        probe_interval_s=probe_interval_s,
        aggregator=aggregator,
        out=out,
    )
    return await job.run()
