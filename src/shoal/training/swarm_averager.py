"""One DiLoCo outer round on the swarm: announce, close, form a group, all-reduce.

Runs on the node's event loop. ``begin`` announces the round as soon as this peer
starts its inner steps, so the swarm counts it; ``report`` updates its samples. The
round core (rounds/) closes the round when the swarm reaches the target or at the
deadline; a peer still training when that happens stops early and contributes what
it has (``closed`` tells the training loop). ``finish`` averages the pseudo-gradient
over the group with the data plane (averaging/), weighted by the samples the leader
recorded. If a member dies mid-all-reduce the group is re-formed without it and the
all-reduce retried, so the round completes with the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from shoal.aggregation import make_aggregator
from shoal.averaging.allreduce import AllReduceFailed, AllReduceResult, all_reduce
from shoal.identity.keys import PeerId
from shoal.peer.round_peer import RoundPeer
from shoal.rounds.events import GroupFallback, GroupFormed, RoundClosed
from shoal.runtime.node import Node
from shoal.secagg.group_driver import SecAggService, require_mean, secure_average

log = logging.getLogger(__name__)

# A round that forms no group within deadline + this is abandoned by this peer.
GROUP_GRACE_S = 60.0
MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class RoundOutcome:
    result: AllReduceResult
    group: GroupFormed


class SwarmAverager:
    def __init__(
        self,
        node: Node,
        run: str,
        compression: str = "int8",
        allreduce_timeout_s: float = 60.0,
        admit: Callable[[PeerId], bool] | None = None,
        aggregator: str = "mean",
        secure_aggregation: bool = False,
    ) -> None:
        self.node = node
        # Robust rules (aggregation/) replace the owners' weighted mean; "mean" keeps it.
        self.aggregator = None if aggregator == "mean" else make_aggregator(aggregator)
        # SecAgg (secagg/group_driver.py) replaces the all-reduce: the group's lowest
        # peer id sums masked updates and learns only the sum. Weighted mean only.
        if secure_aggregation:
            require_mean(aggregator)
            SecAggService.attach(node)  # in place before any peer's first advert
        self.secure_aggregation = secure_aggregation
        # The ledger's admission check (blocking; run off the loop). A group member it
        # refuses is reported as failed, so the round core re-forms the group without it.
        self.admit = admit
        self.run = run
        self.compression = compression
        self.timeout_s = allreduce_timeout_s
        self._groups: dict[int, GroupFormed] = {}
        self._closed: set[int] = set()
        self._changed = asyncio.Event()
        # The all-reduce writes into this buffer every round (out=): a fresh output
        # costs ~0.6 ms of page faults per MiB here (docs/BENCHMARKS.md).
        self._average_out: torch.Tensor | None = None
        node.add_listener(self._on_event)

    def _on_event(self, ev: object) -> None:
        if isinstance(ev, GroupFormed):
            old = self._groups.get(ev.round_no)
            if old is None or ev.attempt >= old.attempt:
                self._groups[ev.round_no] = ev
        elif isinstance(ev, RoundClosed):
            self._closed.add(ev.round_no)
            log.info(
                "round %d closed (%s): %d samples, %d participants",
                ev.round_no, ev.reason, ev.estimated_samples, ev.participants,
            )  # fmt: skip
        elif isinstance(ev, GroupFallback):
            log.warning("round %d: averaging alone (%s)", ev.round_no, ev.reason)
        else:
            return
        self._changed.set()

    @property
    def core(self) -> RoundPeer:
        core = self.node.core
        if not isinstance(core, RoundPeer):
            raise RuntimeError("the node was not started with a run")
        return core

    def closed(self, round_no: int) -> bool:
        """True once the swarm closed ``round_no`` (safe to poll from another thread)."""
        return round_no in self._closed

    async def begin(self, round_no: int) -> None:
        self._groups = {r: g for r, g in self._groups.items() if r >= round_no}
        self._closed = {r for r in self._closed if r >= round_no}
        now = time.time()
        core = self.core
        self.node.apply(core.from_rounds(now, core.rounds.start_round(now, round_no, round_no)))

    def report(self, round_no: int, samples: int) -> None:
        core = self.core
        # Reports are callbacks queued from the training thread; one queued before a
        # fresher report (overlap's at round start) may arrive with fewer samples.
        if core.rounds.round_no == round_no and samples > core.rounds.samples:
            now = time.time()
            self.node.apply(core.from_rounds(now, core.rounds.report_progress(now, samples)))

    async def finish(self, round_no: int, delta: torch.Tensor, samples: int) -> RoundOutcome:
        """Average ``delta`` (this peer's pseudo-gradient) over this round's group.

        With DP on, ``delta`` is already clipped, noised and int8 round-tripped by the
        caller (DiLoCo._encode_delta), so the all-reduce and SecAgg paths alike only
        ever carry the noised update (SecAgg masks it; its fixed point clamps each
        weighted coordinate to ``DEFAULT_CLIP``, post-processing that costs no privacy).

        Without SecAgg the outcome's ``result.average`` is a buffer this averager
        reuses: it stays valid until the next ``finish`` (DiLoCo applies it first)."""
        core, node = self.core, self.node
        now = time.time()
        acts = core.rounds.report_progress(now, samples) + core.rounds.set_ready(now)
        node.apply(core.from_rounds(now, acts))
        deadline = time.monotonic() + core.rounds.config.deadline_s + GROUP_GRACE_S
        tried: set[int] = set()
        for _ in range(MAX_ATTEMPTS):
            group = await self._wait_group(round_no, tried, deadline)
            tried.add(group.attempt)
            refused = await self._refused(group)
            if refused:
                log.warning("round %d: refusing %s (not admitted on-chain)", round_no,
                            ", ".join(p.short() for p in refused))  # fmt: skip
                now = time.time()
                node.apply(core.from_rounds(now, core.rounds.report_failed(now, round_no, refused)))
                continue
            me = next(i for i, m in enumerate(group.members) if m.peer_id == node.peer_id)
            session = f"{self.run}/r{round_no}/a{group.attempt}/{group.leader.short()}"
            try:
                if self.secure_aggregation:
                    res = await secure_average(
                        node, list(group.members), session, delta,
                        [float(max(1, s)) for s in group.member_samples],
                        compression=self.compression, timeout_s=self.timeout_s,
                    )  # fmt: skip
                else:
                    res = await all_reduce(
                        node.router,
                        node.contact,  # type: ignore[arg-type]
                        list(group.members),
                        session,
                        delta,
                        float(max(1, group.member_samples[me])),
                        compression=self.compression,
                        model_version=round_no,
                        timeout_s=self.timeout_s,
                        aggregator=self.aggregator,
                        out=self._output_for(delta),
                    )
            except AllReduceFailed as exc:
                log.warning("round %d all-reduce failed (%s); re-forming", round_no, exc)
                now = time.time()
                failed = core.rounds.report_failed(now, round_no, exc.missing)
                node.apply(core.from_rounds(now, failed))
                continue
            now = time.time()
            node.apply(core.from_rounds(now, core.rounds.complete_round(now, round_no)))
            return RoundOutcome(res, group)
        raise RuntimeError(f"round {round_no}: no successful all-reduce in {MAX_ATTEMPTS} tries")

    def _output_for(self, delta: torch.Tensor) -> torch.Tensor:
        out = self._average_out
        if out is None or out.numel() != delta.numel():
            out = self._average_out = torch.empty(delta.numel(), dtype=torch.float32)
        return out

    async def _refused(self, group: GroupFormed) -> list[PeerId]:
        admit = self.admit
        if admit is None:
            return []
        others = [m.peer_id for m in group.members if m.peer_id != self.node.peer_id]
        ok = await asyncio.to_thread(lambda: [admit(p) for p in others])
        return [p for p, good in zip(others, ok, strict=True) if not good]

    async def _wait_group(self, round_no: int, tried: set[int], deadline: float) -> GroupFormed:
        while True:
            g = self._groups.get(round_no)
            if g is not None and g.attempt not in tried:
                return g
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"round {round_no}: no group formed in time")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                continue
