"""A misbehaving SecAgg member: each mode breaks one step of the protocol (the tests
and the peer processes in net_peer.py use it)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

from shoal.identity.keys import Identity
from shoal.secagg.group_driver import MemberRun
from shoal.secagg.messages import KeyAdvert, MaskedInput
from shoal.transport import TransportError
from shoal.transport.bulk import BulkClient


class Hostile(MemberRun):
    mode = ""

    async def send_advert(self, advert: KeyAdvert) -> None:
        if self.mode == "forged_signature":
            sig = bytearray(advert.signature)
            sig[0] ^= 1
            advert = dataclasses.replace(advert, signature=bytes(sig))
        elif self.mode == "copied_key":  # one key in both slots, validly signed by us
            advert = dataclasses.replace(advert, mask_pk=advert.enc_pk)
            own = self.host.identity.sign(advert.signed_bytes(self.session_bytes))
            advert = dataclasses.replace(advert, signature=own)
        elif self.mode == "other_identity":  # signed by a key that is not in the roster
            other = Identity.generate()
            forged = other.sign(advert.signed_bytes(self.session_bytes))
            advert = dataclasses.replace(advert, signature=forged)
        await super().send_advert(advert)

    async def send_shares(self, blobs: dict[int, bytes]) -> None:
        if self.mode == "shares_missing_one":
            blobs = dict(sorted(blobs.items())[1:])
        elif self.mode == "malformed_shares":  # wrong blob size: refused by the codec
            blobs = {j: b + b"x" for j, b in blobs.items()}
        await super().send_shares(blobs)

    async def send_masked(self, masked: MaskedInput) -> None:
        body = masked.values.numpy().astype("<u4").tobytes()
        if self.mode == "oversized_masked":
            await self.send_bulk(0, "m", [body + bytes(4096)])
        elif self.mode == "short_masked":
            await self.send_bulk(0, "m", [body[:-4]])
        elif self.mode == "more_bytes":
            await self._lie(body, body + bytes(64))
        elif self.mode == "fewer_bytes":
            await self._lie(body, body[: len(body) // 2])
        else:
            await super().send_masked(masked)

    async def _lie(self, announced: bytes, sent: bytes) -> None:
        """Announce one size, send another (the transport's bulk step methods)."""
        client = BulkClient(self.host.identity, self.host.transport.contact.addr, self.group[0])

        def lie() -> None:
            try:
                client.connect()
                client.announce(self.prefix + "m", len(announced))
                client.send_chunk(memoryview(sent))
                client.finish()
            finally:
                client.close()

        with contextlib.suppress(TransportError):
            await asyncio.to_thread(lie)


HOSTILE = {
    "forged_signature": "signature does not verify",
    "other_identity": "signature does not verify",
    "copied_key": "reuses a public key",
    "shares_missing_one": "not every advertiser",
    "malformed_shares": "no shares within",
    "oversized_masked": "masked vector of",
    "short_masked": "masked vector of",
    "more_bytes": "masked stream broke off",
    "fewer_bytes": "masked stream broke off",
}
