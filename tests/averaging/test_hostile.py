"""A member sending bad contributions is excluded; everyone else finishes identically."""

from __future__ import annotations

import asyncio

import pytest
import torch

from shoal.averaging import AllReduce, AllReduceResult
from shoal.averaging.stream_format import ContributionTag
from shoal.training.diloco_math import model_hash
from shoal.transport.bulk import BulkClient

from .helpers import close, reduce_all, reduce_with_one_bad, run, swarm, tensors

NUMEL = 100_003
BAD = 1  # index of the hostile member in the sorted group
WEIGHTS = [2.0, 3.0, 5.0, 7.0]


class Hostile(AllReduce):
    """Lies in its contributions; behaves as an honest owner of its own shard."""

    mode = ""

    async def contribution(self, owner: int) -> tuple[str, list[memoryview | bytes | bytearray]]:
        tag, body = await super().contribution(owner)
        t = ContributionTag(self._idx, owner, self._version, self._numel, "none", self._weight)
        if self.mode == "nan":
            lo, hi = self._bounds[owner]
            x = self._flat[lo:hi].clone()
            x[len(x) // 2] = float("nan")
            return tag, [x.numpy().tobytes()]
        if self.mode == "inf":
            lo, hi = self._bounds[owner]
            x = self._flat[lo:hi].clone()
            x[0] = float("inf")
            return tag, [x.numpy().tobytes()]
        if self.mode == "numel":
            t = ContributionTag(t.sender, t.shard, t.version, t.numel + 1, t.codec, t.weight)
            return t.encode(), body
        if self.mode == "version":
            t = ContributionTag(t.sender, t.shard, t.version - 1, t.numel, t.codec, t.weight)
            return t.encode(), body
        if self.mode == "impersonate":
            t = ContributionTag(0, t.shard, t.version, t.numel, t.codec, t.weight)
            return t.encode(), body
        if self.mode == "short_body":
            return tag, [bytes(memoryview(body[0])[:-4])]
        return tag, body

    async def send_stream(
        self, to: int, tag: str, buffers: list[memoryview | bytes | bytearray]
    ) -> None:
        if self.mode not in ("more_bytes", "fewer_bytes") or not tag.startswith("c/"):
            await super().send_stream(to, tag, buffers)
            return
        data = bytes(memoryview(buffers[0]).cast("B"))
        me = self._transport.contact
        client = BulkClient(self._transport._identity, me.addr, self._group[to])

        def lie() -> None:
            try:
                client.connect()
                client.announce(self._prefix + tag, len(data))
                if self.mode == "more_bytes":
                    client.send_chunk(memoryview(data + b"\0" * 64))
                else:
                    client.send_chunk(memoryview(data)[: len(data) // 2])
                client.finish()
            finally:
                client.close()

        await asyncio.to_thread(lie)


CASES = {
    "nan": "NaN",
    "inf": "NaN/Inf",
    "numel": "wrong size",
    "version": "stale model version",
    "impersonate": "claims member index 0",
    "short_body": "wrong size",
    "more_bytes": "more than",
    "fewer_bytes": "after",
}


@pytest.mark.parametrize("mode", sorted(CASES))
def test_hostile_contribution_is_excluded(mode: str) -> None:
    async def body() -> None:
        members = await swarm(4)
        try:
            xs = tensors(4, NUMEL, seed=3)
            kind = type("H", (Hostile,), {"mode": mode})
            results = await reduce_with_one_bad(members, xs, WEIGHTS, f"hostile/{mode}", BAD, kind)
            bad_id = members[BAD].peer_id
            honest = [i for i in range(4) if i != BAD]
            for i in honest:
                r = results[i]
                assert bad_id in r.excluded and CASES[mode] in r.excluded[bad_id], r.excluded
                assert r.contributors == [members[j].peer_id for j in honest]
                assert r.total_weight == sum(WEIGHTS[j] for j in honest)
            # Identical bits everywhere, the hostile member included.
            assert len({model_hash(r.average) for r in results}) == 1
            # Each shard is the average of whom its owner included: the hostile owner
            # includes itself, the honest owners leave it out.
            from shoal.averaging import shard_bounds

            for j, (lo, hi) in enumerate(shard_bounds(NUMEL, 4)):
                who = range(4) if j == BAD else honest
                w = sum(WEIGHTS[i] for i in who)
                ref = sum(xs[i][lo:hi].double() * WEIGHTS[i] for i in who) / w
                got = results[0].average[lo:hi]
                torch.testing.assert_close(got, ref.float(), rtol=1e-5, atol=1e-6)
                assert results[0].shard_weights[j] == w
            # A stream that lies about its length is a transport-level offence too.
            for i in honest:
                reported = {p for p, _ in members[i].bad}
                if mode in ("more_bytes", "fewer_bytes"):
                    assert reported == {bad_id}, members[i].bad
                else:
                    assert not reported, members[i].bad
        finally:
            await close(members)

    run(body())


def test_non_member_stream_is_refused() -> None:
    async def body() -> None:
        members = await swarm(3)
        outsider = (await swarm(1))[0]
        try:
            xs = tensors(2, 1000)
            task = asyncio.ensure_future(
                reduce_all(members[:2], xs, [1.0, 1.0], "closed-club", timeout_s=5)
            )
            while "ar/closed-club/" not in members[0].router.prefixes:
                await asyncio.sleep(0.001)
            from shoal.transport import BulkRejected

            tag = "ar/closed-club/" + ContributionTag(0, 0, 7, 1000, "none", 1.0).encode()
            with pytest.raises(BulkRejected):
                await outsider.transport.send_bulk(members[0].contact, tag, [bytes(2000)])
            outs = await task
            assert all(isinstance(o, AllReduceResult) and not o.excluded for o in outs)
        finally:
            await close([*members, outsider])

    run(body())
