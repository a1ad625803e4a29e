"""A refusal that was sent before the owner joined the session, but reaches us after
we have heard from the owner, is not final: the sender retries and the owner gets the
contribution. (Seen on the wan testbed once kept bulk connections made sends instant:
the owner's shard went without that member for the whole timeout.)"""

from __future__ import annotations

from shoal.averaging import AllReduce, AllReduceResult
from shoal.averaging.allreduce import Buffer
from shoal.transport import BulkRejected

from .helpers import close, reduce_all, run, swarm, tensors

NUMEL = 10_000
SENDER, OWNER = 0, 2


class RefusedBeforeJoin(AllReduce):
    """Member SENDER's first contribution to OWNER is refused, and OWNER is heard from
    before that refusal arrives: the race the wan testbed hit."""

    raced = False

    async def send_stream(self, to: int, tag: str, buffers: list[Buffer]) -> None:
        if to == OWNER and tag.startswith("c/") and not self.raced:
            type(self).raced = True
            self._heard_from.add(to)  # OWNER joined and sent to us in the meantime
            raise BulkRejected(f"{self._group[to].peer_id.short()} refused: not yet in session")
        await super().send_stream(to, tag, buffers)


def test_refusal_from_before_the_owner_joined_is_retried() -> None:
    async def body() -> None:
        members = await swarm(4)
        try:
            xs = tensors(4, NUMEL, seed=5)
            jobs = [RefusedBeforeJoin if i == SENDER else AllReduce for i in range(4)]
            outs = await reduce_all(members, xs, [1.0] * 4, "race", jobs=jobs, timeout_s=6.0)
            assert RefusedBeforeJoin.raced
            results = [o for o in outs if isinstance(o, AllReduceResult)]
            assert len(results) == 4, outs
            everyone = [m.peer_id for m in members]
            for r in results:
                assert r.contributors == everyone, r.excluded
                assert not r.excluded, r.excluded
        finally:
            await close(members)

    run(body())
