"""int4z all-reduce: int4's exact result over fewer bytes, and a member whose entropy
frame does not rebuild to its payload is excluded while everyone else finishes."""

from __future__ import annotations

import zlib

import pytest
import torch

from shoal.averaging import AllReduce, AllReduceResult
from shoal.training.diloco_math import model_hash

from .helpers import close, reduce_all, reduce_with_one_bad, run, swarm

NUMEL = 200_003
BAD = 1
WEIGHTS = [1.0, 2.0, 3.0, 4.0]


def heavy_tailed(n: int, numel: int, seed: int) -> list[torch.Tensor]:
    """What DiLoCo averages: heavy-tailed updates (most values near 0)."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(numel, generator=g) * torch.rand(numel, generator=g).pow(4) for _ in range(n)
    ]


def results(outs: list[AllReduceResult | BaseException]) -> list[AllReduceResult]:
    got = [o for o in outs if isinstance(o, AllReduceResult)]
    assert len(got) == len(outs), outs
    return got


def test_int4z_gives_int4s_bits_with_fewer_bytes() -> None:
    async def body() -> None:
        members = await swarm(4)
        try:
            xs = heavy_tailed(4, NUMEL, seed=3)
            plain = results(await reduce_all(members, xs, WEIGHTS, "z/int4", compression="int4"))
            coded = results(await reduce_all(members, xs, WEIGHTS, "z/int4z", compression="int4z"))
            hashes = {model_hash(r.average) for r in plain + coded}
            assert len(hashes) == 1  # the same model, whichever way the bytes travelled
            for p, c in zip(plain, coded, strict=True):
                assert c.excluded == {} and c.contributors == p.contributors
                assert c.bytes_sent < 0.85 * p.bytes_sent, (c.bytes_sent, p.bytes_sent)
                assert c.bytes_received < 0.85 * p.bytes_received
        finally:
            await close(members)

    run(body())


class BadFrame(AllReduce):
    mode = ""

    async def contribution(self, owner: int) -> tuple[str, list[memoryview | bytes | bytearray]]:
        tag, body = await super().contribution(owner)
        frame = bytearray(b"".join(bytes(memoryview(b).cast("B")) for b in body))
        assert frame[0] == 1  # coded (heavy-tailed input)
        if self.mode == "truncated":
            frame = frame[: len(frame) // 2]
        elif self.mode == "trailing":
            frame += b"\x00junk"
        elif self.mode == "method":
            frame[0] = 9
        elif self.mode == "bomb":  # inflates far past the payload, frame within bounds
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            frame = bytearray(b"\x01" + c.compress(bytes(1 << 24)) + c.flush())
        return tag, [frame]


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("truncated", "inflates to"),
        ("trailing", "does not end"),
        ("method", "unknown entropy-coding method"),
        ("bomb", "inflates to"),
    ],
)
def test_malformed_frame_is_excluded(mode: str, reason: str) -> None:
    async def body() -> None:
        members = await swarm(4)
        try:
            xs = heavy_tailed(4, NUMEL, seed=4)
            kind = type("B", (BadFrame,), {"mode": mode})
            outs = await reduce_with_one_bad(
                members, xs, WEIGHTS, f"z/{mode}", BAD, kind, compression="int4z"
            )
            bad_id = members[BAD].peer_id
            for i in (i for i in range(4) if i != BAD):
                assert reason in outs[i].excluded.get(bad_id, ""), outs[i].excluded
                assert bad_id not in outs[i].contributors
            assert len({model_hash(r.average) for r in outs}) == 1
        finally:
            await close(members)

    run(body())
