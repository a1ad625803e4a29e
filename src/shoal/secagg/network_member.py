"""A member's side of a networked SecAgg session: advertise, share, mask, unmask on
request, and take the collector's average."""

from __future__ import annotations

import asyncio
import logging
import math

from shoal.averaging.allreduce import AllReduceFailed, AllReduceResult
from shoal.averaging.stream_format import (
    STATUS_INCLUDED,
)
from shoal.compression import CompressionError
from shoal.numerics import all_finite
from shoal.secagg.client import Phase, SecAggError
from shoal.secagg.messages import KeyAdvert, MaskedInput, UnmaskRequest
from shoal.secagg.network_messages import (
    MASKED_TAG,
    RESULT_TAG,
    AbortMsg,
    AdvertMsg,
    AdvertsMsg,
    ResultHeader,
    RoutedMsg,
    SharesMsg,
    UnmaskMsg,
    UnmaskRequestMsg,
    result_header_bytes,
)
from shoal.secagg.network_session import (
    ADVERT_RESEND_S,
    MEMBER_WAIT_FACTOR,
    SessionRun,
    ring_bytes,
)
from shoal.wire.codec import Message
from shoal.wire.contact import Contact

log = logging.getLogger(__name__)


class MemberRun(SessionRun):
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
