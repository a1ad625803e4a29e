"""One DiLoCo outer round on the swarm: close the round, form a group, all-reduce.

Runs on the node's event loop. The round core (rounds/) decides when the round
closes and who averages with whom; the data plane (averaging/) averages the
pseudo-gradients weighted by samples. If a member dies mid-all-reduce the group is
re-formed without it and the all-reduce retried, so the round completes with the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import torch

from shoal.averaging.allreduce import AllReduceFailed, AllReduceResult, all_reduce
from shoal.peer.round_peer import RoundPeer
from shoal.rounds.events import GroupFallback, GroupFormed, RoundClosed
from shoal.runtime.node import Node

log = logging.getLogger(__name__)

# A round that forms no group within deadline + this is abandoned by this peer.
GROUP_GRACE_S = 60.0
MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class RoundOutcome:
    result: AllReduceResult
    group: GroupFormed
    close_reason: str


class SwarmAverager:
    def __init__(
        self, node: Node, run: str, compression: str = "int8", allreduce_timeout_s: float = 60.0
    ) -> None:
        self.node = node
        self.run = run
        self.compression = compression
        self.timeout_s = allreduce_timeout_s
        self._events: asyncio.Queue[object] = asyncio.Queue()
        node.add_listener(self._on_event)

    def _on_event(self, ev: object) -> None:
        if isinstance(ev, GroupFormed | RoundClosed | GroupFallback):
            self._events.put_nowait(ev)

    @property
    def core(self) -> RoundPeer:
        core = self.node.core
        if not isinstance(core, RoundPeer):
            raise RuntimeError("the node was not started with a run")
        return core

    async def average(self, round_no: int, delta: torch.Tensor, samples: int) -> RoundOutcome:
        """Average ``delta`` (this peer's pseudo-gradient) over this round's group."""
        core, node = self.core, self.node
        while not self._events.empty():  # leftovers of an abandoned round
            self._events.get_nowait()
        now = time.time()
        acts = core.rounds.start_round(now, round_no, model_version=round_no)
        acts += core.rounds.report_progress(now, samples)
        acts += core.rounds.set_ready(now)
        node.apply(core.from_rounds(now, acts))
        deadline = time.monotonic() + core.rounds.config.deadline_s + GROUP_GRACE_S
        reason = "?"
        for _ in range(MAX_ATTEMPTS):
            group = await self._next_group(round_no, deadline)
            if isinstance(group, str):
                reason = group
                continue
            session = f"{self.run}/r{round_no}/a{group.attempt}/{group.leader.short()}"
            try:
                res = await all_reduce(
                    node.router,
                    node.contact,  # type: ignore[arg-type]
                    list(group.members),
                    session,
                    delta,
                    float(samples),
                    compression=self.compression,
                    model_version=round_no,
                    timeout_s=self.timeout_s,
                )
            except AllReduceFailed as exc:
                log.warning("round %d all-reduce failed (%s); re-forming", round_no, exc)
                now = time.time()
                node.apply(core.from_rounds(now, core.rounds.report_failed(now, round_no, exc.missing)))
                continue
            now = time.time()
            node.apply(core.from_rounds(now, core.rounds.complete_round(now, round_no)))
            return RoundOutcome(res, group, reason)
        raise RuntimeError(f"round {round_no}: no successful all-reduce in {MAX_ATTEMPTS} tries")

    async def _next_group(self, round_no: int, deadline: float) -> GroupFormed | str:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"round {round_no}: no group formed in time")
            ev = await asyncio.wait_for(self._events.get(), left)
            if isinstance(ev, RoundClosed) and ev.round_no == round_no:
                log.info(
                    "round %d closed (%s): %d samples, %d participants",
                    round_no, ev.reason, ev.estimated_samples, ev.participants,
                )  # fmt: skip
                return ev.reason
            if isinstance(ev, GroupFallback) and ev.round_no == round_no:
                log.warning("round %d: averaging alone (%s)", round_no, ev.reason)
            if isinstance(ev, GroupFormed) and ev.round_no == round_no:
                return ev
