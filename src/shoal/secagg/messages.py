"""The messages of one secure-aggregation session (ids are 1..n, the Shamir points)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KeyAdvert:
    sender: int
    enc_pk: bytes  # X25519, encrypts the shares sent to this peer
    mask_pk: bytes  # X25519, agrees the pairwise masks
    signature: bytes = b""  # Ed25519 by the sender's identity over signed_bytes(session)

    def signed_bytes(self, session: bytes) -> bytes:
        """What the signature covers: session, sender and both keys."""
        return (
            b"shoal-secagg-advert-v1|"
            + session
            + self.sender.to_bytes(4, "big")
            + (self.enc_pk + self.mask_pk)
        )


@dataclass(frozen=True)
class EncryptedShares:
    sender: int
    blobs: dict[int, bytes]  # receiver -> AES-GCM(share of b_sender, share of mask_sk)


@dataclass(frozen=True)
class MaskedInput:
    sender: int
    values: torch.Tensor  # int64 ring elements in [0, 2^32)


@dataclass(frozen=True)
class UnmaskRequest:
    survivors: tuple[int, ...]  # peers whose masked input the collector holds


@dataclass(frozen=True)
class UnmaskShares:
    sender: int
    self_mask: dict[int, bytes]  # survivor j -> share of b_j
    mask_key: dict[int, bytes]  # dropped j -> share of j's masking private key
