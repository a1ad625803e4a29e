"""int4 all-reduce: a member whose payload holds a code the encoder never emits
(nibble 0) or a non-finite scale is excluded; everyone else finishes identically."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.averaging import AllReduce
from shoal.compression.int4 import DEFAULT_CHUNK_SIZE
from shoal.training.diloco_math import model_hash

from .helpers import close, reduce_with_one_bad, run, swarm, tensors

NUMEL = 100_003
BAD = 2


class Corrupting(AllReduce):
    mode = ""

    async def contribution(self, owner: int) -> tuple[str, list[memoryview | bytes | bytearray]]:
        tag, body = await super().contribution(owner)
        data = bytearray(b"".join(bytes(memoryview(b).cast("B")) for b in body))
        lo, hi = self._bounds[owner]
        scales = 4 * -(-(hi - lo) // DEFAULT_CHUNK_SIZE)
        if self.mode == "nibble":
            data[scales + 7] &= 0xF0  # low nibble 0: q = -8
        else:
            data[0:4] = np.float32(np.nan).tobytes()
        return tag, [data]


@pytest.mark.parametrize(("mode", "reason"), [("nibble", "nibble 0"), ("scale", "scale")])
def test_malformed_int4_contribution_is_excluded(mode: str, reason: str) -> None:
    async def body() -> None:
        members = await swarm(4)
        try:
            xs = tensors(4, NUMEL, seed=5)
            kind = type("C", (Corrupting,), {"mode": mode})
            results = await reduce_with_one_bad(
                members, xs, [1.0, 2.0, 3.0, 4.0], f"int4/{mode}", BAD, kind, compression="int4"
            )
            bad_id = members[BAD].peer_id
            for i in (i for i in range(4) if i != BAD):
                assert reason in results[i].excluded.get(bad_id, ""), results[i].excluded
            assert len({model_hash(r.average) for r in results}) == 1
        finally:
            await close(members)

    run(body())
