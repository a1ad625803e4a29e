"""The summing side of secure aggregation, sans-IO: relays keys and shares, adds the
masked inputs, and removes the masks with the shares the survivors return.

In a swarm the collector is one group member (the group leader): it learns the sum and
who took part, nothing else, unless ``threshold`` peers collude with it.
"""

from __future__ import annotations

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shoal.secagg import fixed_point, prg, shamir
from shoal.secagg.client import SecAggError, public_bytes
from shoal.secagg.messages import (
    EncryptedShares,
    KeyAdvert,
    MaskedInput,
    UnmaskRequest,
    UnmaskShares,
)


class SecAggCollector:
    def __init__(
        self, n: int, threshold: int, session: bytes, numel: int, *, frac_bits: int = 16
    ) -> None:
        self.n, self.t, self.session, self.numel, self.frac_bits = (
            n, threshold, session, numel, frac_bits,
        )  # fmt: skip
        self.adverts: dict[int, KeyAdvert] = {}
        self.shares: dict[int, EncryptedShares] = {}
        self.masked: dict[int, torch.Tensor] = {}
        self.unmask: dict[int, UnmaskShares] = {}
        self._survivors: tuple[int, ...] = ()

    def _check_sender(self, sender: int, seen: dict[int, object]) -> None:
        if not 1 <= sender <= self.n:
            raise SecAggError(f"sender {sender} is not in 1..{self.n}")
        if sender in seen:
            raise SecAggError(f"second message from {sender} in this step")

    def on_advert(self, msg: KeyAdvert) -> None:
        self._check_sender(msg.sender, self.adverts)  # type: ignore[arg-type]
        self.adverts[msg.sender] = msg

    def close_adverts(self) -> dict[int, KeyAdvert]:
        if len(self.adverts) < self.t:
            raise SecAggError(f"{len(self.adverts)} adverts; threshold {self.t}")
        return dict(self.adverts)

    def on_shares(self, msg: EncryptedShares) -> None:
        self._check_sender(msg.sender, self.shares)  # type: ignore[arg-type]
        if msg.sender not in self.adverts or not set(msg.blobs) <= set(self.adverts):
            raise SecAggError(f"shares from or to a peer that did not advertise ({msg.sender})")
        self.shares[msg.sender] = msg

    def close_shares(self) -> dict[int, dict[int, bytes]]:
        """Receiver -> {sender: ciphertext}, for the peers that sent shares (U2)."""
        if len(self.shares) < self.t:
            raise SecAggError(f"{len(self.shares)} peers sent shares; threshold {self.t}")
        route: dict[int, dict[int, bytes]] = {j: {} for j in self.shares}
        for i, msg in self.shares.items():
            for j, blob in msg.blobs.items():
                if j in route:
                    route[j][i] = blob
        return route

    def on_masked(self, msg: MaskedInput) -> None:
        self._check_sender(msg.sender, self.masked)  # type: ignore[arg-type]
        v = msg.values
        if msg.sender not in self.shares:
            raise SecAggError(f"masked input from {msg.sender}, who sent no shares")
        if v.dtype != torch.int64 or v.dim() != 1 or v.numel() != self.numel:
            raise SecAggError(f"masked input of {v.dtype} {tuple(v.shape)}; want ({self.numel},)")
        if v.numel() and (int(v.min()) < 0 or int(v.max()) > fixed_point.MASK):
            raise SecAggError("masked input outside the ring")
        self.masked[msg.sender] = v

    def close_masked(self) -> UnmaskRequest:
        if len(self.masked) < self.t:
            raise SecAggError(f"{len(self.masked)} masked inputs; threshold {self.t}")
        self._survivors = tuple(sorted(self.masked))
        return UnmaskRequest(self._survivors)

    def on_unmask(self, msg: UnmaskShares) -> None:
        self._check_sender(msg.sender, self.unmask)  # type: ignore[arg-type]
        if msg.sender not in self._survivors:
            raise SecAggError(f"unmask shares from {msg.sender}, not a survivor")
        dropped = set(self.shares) - set(self._survivors)
        if set(msg.self_mask) != set(self._survivors) or set(msg.mask_key) != dropped:
            raise SecAggError(f"unmask shares from {msg.sender} cover the wrong peers")
        self.unmask[msg.sender] = msg

    def finish(self) -> torch.Tensor:
        """The sum of the survivors' inputs, decoded to fp32."""
        if len(self.unmask) < self.t:
            raise SecAggError(f"{len(self.unmask)} peers sent unmask shares; threshold {self.t}")
        survivors = self._survivors
        dropped = sorted(set(self.shares) - set(survivors))
        # uint32 arithmetic wraps modulo 2^32: the ring, with no reduction step.
        total = np.zeros(self.numel, dtype=np.uint32)
        for j in survivors:
            total += self.masked[j].numpy().astype(np.uint32)
        for j in survivors:
            b = shamir.reconstruct({i: m.self_mask[j] for i, m in self.unmask.items()}, self.t)
            total -= prg.mask_u32(b, self.numel)
        for j in dropped:
            raw = shamir.reconstruct({i: m.mask_key[j] for i, m in self.unmask.items()}, self.t)
            key = X25519PrivateKey.from_private_bytes(raw)
            if public_bytes(key) != self.adverts[j].mask_pk:
                raise SecAggError(f"shares of {j}'s mask key do not match its advert")
            for i in survivors:
                seed = prg.agree(key, self.adverts[i].mask_pk, self.session, b"pair-mask")
                # survivor i added +m if i < j, else -m: take it back out.
                if i < j:
                    total -= prg.mask_u32(seed, self.numel)
                else:
                    total += prg.mask_u32(seed, self.numel)
        return fixed_point.decode(torch.from_numpy(total.astype(np.int64)), self.frac_bits)

    @property
    def survivors(self) -> tuple[int, ...]:
        return self._survivors
