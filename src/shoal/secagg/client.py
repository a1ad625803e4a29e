"""One peer's side of secure aggregation (SecAgg, Bonawitz et al. 2017), sans-IO.

    advertise()                -> KeyAdvert        (two fresh X25519 key pairs)
    on_adverts(adverts)        -> EncryptedShares  (Shamir shares of b and mask_sk)
    on_shares(blobs, x)        -> MaskedInput      (encode(x) + PRG(b) +- pairwise masks)
    on_unmask_request(req)     -> UnmaskShares     (b-shares of survivors, key-shares
                                                     of the dropped; never both)

The pairwise masks hide x from everyone (they cancel only in the sum); the self mask b
protects a peer that is slow rather than dropped: the collector gets either b's shares
(peer counted) or the mask key's shares (peer dropped), never both, since a client
answers one unmask request only and checks that no id is in both lists.
The core gets its randomness from ``entropy`` and holds no socket or clock.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Mapping

import numpy as np
import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shoal.identity.keys import Identity, PeerId, verify
from shoal.secagg import fixed_point, prg, shamir
from shoal.secagg.messages import (
    EncryptedShares,
    KeyAdvert,
    MaskedInput,
    UnmaskRequest,
    UnmaskShares,
)

MAX_PEERS = 1024  # Shamir points and pairwise masks grow with n; a session is one group
_PLAIN = 8 + 2 * shamir.SHARE_BYTES


class SecAggError(ValueError):
    """A protocol step got input that would break correctness or privacy; refused."""


class Phase(enum.Enum):
    NEW = 0
    ADVERTISED = 1
    SHARED = 2
    MASKED = 3
    DONE = 4


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def share_nonce(sender: int, receiver: int) -> bytes:
    # i->j and j->i share one key; distinct nonces keep AES-GCM safe.
    return sender.to_bytes(6, "big") + receiver.to_bytes(6, "big")


def randbelow_from(entropy: Callable[[int], bytes]) -> Callable[[int], int]:
    # 80 random bytes reduced mod a 521-bit prime: bias below 2^-119.
    return lambda p: int.from_bytes(entropy(80), "big") % p


class SecAggClient:
    def __init__(
        self,
        me: int,
        n: int,
        threshold: int,
        session: bytes,
        numel: int,
        *,
        clip: float,
        frac_bits: int = 16,
        entropy: Callable[[int], bytes] = os.urandom,
        identity: Identity | None = None,
        roster: Mapping[int, PeerId] | None = None,
    ) -> None:
        """``identity`` signs our key advert; with ``roster`` (id -> peer id) every
        advert must carry a valid signature by that peer, so a relaying collector
        cannot swap in keys of its own (without it, the collector is trusted to relay
        keys faithfully: honest-but-curious only)."""
        if not 2 <= n <= MAX_PEERS or not 1 <= me <= n:
            raise ValueError(f"need 2 <= n <= {MAX_PEERS} and 1 <= me <= n")
        if not n // 2 < threshold <= n:
            # t > n/2: two disjoint halves can never both unmask, so a collector cannot
            # play two different survivor sets against each other.
            raise ValueError(f"threshold must be in ({n // 2}, {n}], got {threshold}")
        fixed_point.check_capacity(n, clip, frac_bits)
        self.me, self.n, self.t, self.session, self.numel = me, n, threshold, session, numel
        self.clip, self.frac_bits = clip, frac_bits
        self._entropy = entropy
        self._identity = identity
        self._roster = dict(roster) if roster is not None else None
        self._enc = X25519PrivateKey.from_private_bytes(entropy(32))
        self._mask = X25519PrivateKey.from_private_bytes(entropy(32))
        self._b = entropy(32)
        self.phase = Phase.NEW
        self._advert: KeyAdvert | None = None
        self._adverts: dict[int, KeyAdvert] = {}
        self._shared: set[int] = set()  # U2: peers whose shares we hold
        self._b_shares: dict[int, bytes] = {}
        self._key_shares: dict[int, bytes] = {}

    def _expect(self, phase: Phase) -> None:
        if self.phase is not phase:
            raise SecAggError(f"peer {self.me}: step out of order (in {self.phase.name})")

    def advertise(self) -> KeyAdvert:
        self._expect(Phase.NEW)
        self.phase = Phase.ADVERTISED
        advert = KeyAdvert(self.me, public_bytes(self._enc), public_bytes(self._mask))
        if self._identity is not None:
            sig = self._identity.sign(advert.signed_bytes(self.session))
            advert = KeyAdvert(advert.sender, advert.enc_pk, advert.mask_pk, sig)
        self._advert = advert
        return advert

    def on_adverts(self, adverts: Mapping[int, KeyAdvert]) -> EncryptedShares:
        self._expect(Phase.ADVERTISED)
        if adverts.get(self.me) != self._advert:
            raise SecAggError("our own key advert is missing or altered")
        if len(adverts) < self.t:
            raise SecAggError(f"{len(adverts)} peers advertised; the threshold is {self.t}")
        keys: set[bytes] = set()
        for j, a in adverts.items():
            if a.sender != j or not 1 <= j <= self.n:
                raise SecAggError(f"advert under id {j} claims sender {a.sender}")
            if len(a.enc_pk) != 32 or len(a.mask_pk) != 32:
                raise SecAggError(f"peer {j}: public keys must be 32 bytes")
            if self._roster is not None:
                pid = self._roster.get(j)
                if pid is None or not verify(pid, a.signature, a.signed_bytes(self.session)):
                    raise SecAggError(f"peer {j}: key advert signature does not verify")
            keys.update((a.enc_pk, a.mask_pk))
        if len(keys) != 2 * len(adverts):
            raise SecAggError("two adverts share a public key (replayed or forged)")
        self._adverts = dict(adverts)
        ids = sorted(adverts)
        rb = randbelow_from(self._entropy)
        b_sh = shamir.split(self._b, self.t, ids, rb)
        k_sh = shamir.split(self._mask.private_bytes_raw(), self.t, ids, rb)
        blobs = {}
        for j in ids:
            plain = self.me.to_bytes(4, "big") + j.to_bytes(4, "big") + b_sh[j] + k_sh[j]
            if j == self.me:
                self._keep(j, plain)
                continue
            key = prg.agree(self._enc, adverts[j].enc_pk, self.session, b"share-key")
            blobs[j] = AESGCM(key).encrypt(share_nonce(self.me, j), plain, self.session)
        self.phase = Phase.SHARED
        return EncryptedShares(self.me, blobs)

    def _keep(self, sender: int, plain: bytes) -> None:
        if len(plain) != _PLAIN:
            raise SecAggError(f"share from {sender} has {len(plain)} bytes")
        if (
            int.from_bytes(plain[:4], "big") != sender
            or int.from_bytes(plain[4:8], "big") != self.me
        ):
            raise SecAggError(f"share from {sender} is addressed to someone else")
        self._b_shares[sender] = plain[8 : 8 + shamir.SHARE_BYTES]
        self._key_shares[sender] = plain[8 + shamir.SHARE_BYTES :]
        self._shared.add(sender)

    def on_shares(self, blobs: Mapping[int, bytes], x: torch.Tensor) -> MaskedInput:
        """``blobs``: sender -> ciphertext addressed to us (senders form U2)."""
        self._expect(Phase.SHARED)
        if x.dim() != 1 or x.numel() != self.numel:
            raise SecAggError(f"input of shape {tuple(x.shape)}; expected ({self.numel},)")
        for j, blob in blobs.items():
            if j not in self._adverts or j == self.me:
                raise SecAggError(f"share from {j}, who did not advertise keys")
            key = prg.agree(self._enc, self._adverts[j].enc_pk, self.session, b"share-key")
            try:
                plain = AESGCM(key).decrypt(share_nonce(j, self.me), blob, self.session)
            except InvalidTag:
                raise SecAggError(f"share from {j} fails authentication") from None
            self._keep(j, plain)
        if len(self._shared) < self.t:
            raise SecAggError(f"shares from {len(self._shared)} peers; threshold {self.t}")
        try:
            y = fixed_point.encode(x, self.clip, self.frac_bits)
        except ValueError as exc:
            raise SecAggError(str(exc)) from None
        # uint32 arithmetic wraps modulo 2^32: the ring, with no reduction step.
        ring = y.numpy().astype(np.uint32)
        ring += prg.mask_u32(self._b, self.numel)
        for j in sorted(self._shared - {self.me}):
            seed = prg.agree(self._mask, self._adverts[j].mask_pk, self.session, b"pair-mask")
            if self.me < j:
                ring += prg.mask_u32(seed, self.numel)
            else:
                ring -= prg.mask_u32(seed, self.numel)
        self.phase = Phase.MASKED
        return MaskedInput(self.me, torch.from_numpy(ring.astype(np.int64)))

    def on_unmask_request(self, req: UnmaskRequest) -> UnmaskShares:
        self._expect(Phase.MASKED)  # answered once only
        survivors = set(req.survivors)
        if self.me not in survivors:
            raise SecAggError("asked to unmask a sum that leaves us out")
        if not survivors <= self._shared:
            raise SecAggError("survivor list names peers that never shared keys")
        if len(survivors) < self.t:
            raise SecAggError(f"{len(survivors)} survivors; the threshold is {self.t}")
        self.phase = Phase.DONE
        dropped = self._shared - survivors
        return UnmaskShares(
            self.me,
            {j: self._b_shares[j] for j in sorted(survivors)},
            {j: self._key_shares[j] for j in sorted(dropped)},
        )
