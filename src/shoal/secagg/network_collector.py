"""The collector's side of a networked SecAgg session (the group's lowest peer id):
relay keys and shares, take the masked inputs, unmask the sum, send the average."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import numpy as np
import torch

from shoal.averaging.allreduce import AllReduceFailed, AllReduceResult
from shoal.averaging.stream_format import (
    STATUS_INCLUDED,
    STATUS_MALFORMED,
    STATUS_NOT_RECEIVED,
    STATUS_REJECTED,
    STATUS_STREAM_FAILED,
    STATUS_UNREACHABLE,
)
from shoal.identity.keys import verify
from shoal.secagg.client import SecAggError
from shoal.secagg.collector import SecAggCollector
from shoal.secagg.messages import EncryptedShares, KeyAdvert, MaskedInput
from shoal.secagg.messages import UnmaskShares as CoreUnmaskShares
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
)
from shoal.secagg.network_session import (
    CONTROL_WAIT_FRACTION,
    MASKED_START_FRACTION,
    Buffer,
    SessionRun,
    Step,
)
from shoal.wire.codec import Message
from shoal.wire.contact import Contact

log = logging.getLogger(__name__)


class CollectorRun(SessionRun):
    """The collector's side (member 0): relay, sum, unmask, send the average."""

    # Keep what the collector saw of each member's masked input (tests check privacy).
    keep_received = False

    def setup(self) -> None:
        self.core = SecAggCollector(self.n, self.t, self.session_bytes, self.k,
                                    frac_bits=self.frac)  # fmt: skip
        self.step = Step.ADVERTS
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
        if self.step is Step.ADVERTS:
            have = set(self.core.adverts)
        elif self.step is Step.SHARES:
            have = set(self.core.shares) | {m + 1 for m in range(self.n)
                                            if m + 1 not in self.core.adverts}  # fmt: skip
        elif self.step is Step.MASKED:
            have = set(self.core.masked) | {m + 1 for m in range(self.n)
                                            if m + 1 not in self.core.shares}  # fmt: skip
        elif self.step is Step.UNMASK:
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
        if self.step is not Step.ADVERTS or m + 1 in self.core.adverts:
            # members re-send until they hear from us; a late one waits for the result
            log.debug("secagg %s: late or repeated advert from %s", self.session, self.who(m))
            return
        advert = KeyAdvert(m + 1, msg.enc_pk, msg.mask_pk, msg.signature)
        if not verify(self.ids[m], msg.signature, advert.signed_bytes(self.session_bytes)):
            self.exclude(m, STATUS_REJECTED, "key advert signature does not verify "
                         "(forged, or signed for another session or settings)")  # fmt: skip
            return
        known = {k for a in self.core.adverts.values() for k in (a.enc_pk, a.mask_pk)}
        if {msg.enc_pk, msg.mask_pk} & known or msg.enc_pk == msg.mask_pk:
            # A replayed or copied key would make every client refuse the advert list.
            self.exclude(m, STATUS_REJECTED, "key advert reuses a public key")
            return
        try:
            self.core.on_advert(advert)
        except SecAggError as exc:
            self.exclude(m, STATUS_REJECTED, f"bad key advert: {exc}")

    def _on_shares(self, m: int, msg: SharesMsg) -> None:
        if self.step is not Step.SHARES or m + 1 in self.core.shares:
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
        if self.step is not Step.UNMASK or m + 1 in self.core.unmask:
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
            self.step is not Step.MASKED
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
        self.step = Step.SHARES
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
        self.step = Step.MASKED
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
        self.step = Step.UNMASK
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
        self.step = Step.DONE
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
