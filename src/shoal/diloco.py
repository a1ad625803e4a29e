"""``shoal.DiLoCo``: wrap a torch model and its optimizer; train with the swarm.

    node = shoal.start_node(data_dir="/tmp/n0", run="my-run", bootstrap=[...])
    opt = shoal.DiLoCo(model, torch.optim.AdamW(model.parameters()), run="my-run",
                       node=node, inner_steps=50)
    for x, y in batches:
        loss = model(x, y)
        opt.zero_grad(); loss.backward()
        opt.step(samples=len(x))    # every inner_steps-th call syncs with the swarm

Inner steps use the user's optimizer. Every ``inner_steps`` steps, the pseudo-gradient
(global params - local params) is averaged across this round's group, weighted by
samples, and an outer Nesterov SGD step moves the global params; the model then
restarts from them. Every member of a group ends the round with bit-identical params.
With ``dp=shoal.privacy.DpSettings(clip_norm, noise_multiplier, delta)`` each peer clips
and noises its pseudo-gradient before it leaves the peer; ``opt.epsilon`` and each
``RoundLog.epsilon`` say what that has cost so far.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from shoal.compression import ErrorFeedback, get_codec
from shoal.privacy.settings import DpSettings
from shoal.rounds.events import GroupFormed, RoundClosed
from shoal.runtime.background import NodeThread
from shoal.runtime.node import Node
from shoal.secagg.group_driver import require_mean
from shoal.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from shoal.training.diloco_math import (
    OuterOptimizer,
    flatten_params,
    model_hash,
    pseudo_gradient,
    unflatten_into,
)
from shoal.training.state_sync import (
    Admit,
    Snapshot,
    StateServer,
    choose_head,
    fetch_state,
    read_heads,
    state_hash,
)
from shoal.training.swarm_averager import RoundOutcome, SwarmAverager
from shoal.wire.contact import Contact

log = logging.getLogger(__name__)

# Inner steps between progress updates to the swarm without overlap (each is a DHT put
# at most every publish interval, so this only bounds the cross-thread calls).
PROGRESS_EVERY = 5
# A joiner waits at most this long for the swarm's current round to end.
JOIN_WAIT_S = 180.0
JOIN_POLL_S = 0.5
# After a round, wait this long for the group's heads before checking we agree.
HEADS_WAIT_S = 3.0
# converge(): how long a peer stays after its last round for the live swarm to agree.
CONVERGE_TIMEOUT_S = 60.0
CONVERGE_POLL_S = 0.5
# Phases of DiLoCo.timings: encode (pseudo-gradient + int8), ledger_commit, average
# (blocking finish: close, grouping, all-reduce), wait_pending (overlap: blocked on the
# previous round's average), apply (outer step, hash, anchor, publish), catch_up (head
# vote), flush (overlap: the last round's average, with nothing left to hide behind).
TIMING_KEYS = (
    "encode_s", "ledger_commit_s", "average_s", "wait_pending_s", "apply_s", "catch_up_s",
    "flush_s",
)  # fmt: skip


class RoundLedger(Protocol):
    """Optional ledger hook (shoal.ledger.training_hook.LedgerHook): commits each update
    to this peer's signed feed before it is used, and anchors each round's aggregate."""

    def commit_update(self, round_no: int, delta: bytes, samples: int) -> None: ...

    def anchor_round(
        self, round_no: int, model_hash: str, members: Sequence[Contact]
    ) -> str | None: ...


@dataclass
class RoundLog:
    round: int
    model_hash: str
    group_size: int
    total_samples: int
    bytes_sent: int
    bytes_received: int
    excluded: dict[str, str] = field(default_factory=dict)
    steps: int = 0  # this peer's inner steps in the round (what its delta holds)
    # seconds between the round's milestones as this peer saw them: close -> this
    # peer's sync (its last inner step), close -> group formed (the join window),
    # group formed -> average done (the all-reduce)
    phases: dict[str, float] = field(default_factory=dict)
    # DP on (DiLoCo(dp=...)): epsilon this peer has spent so far, for DpSettings.delta
    # (every update it released, including one still averaging with overlap)
    epsilon: float | None = None
    # set when the head vote after this round outvoted us and we adopted the swarm's
    # state (we averaged alone, sat across a partition, or started the round from a
    # stale state): the model hash we went on from instead of ``model_hash``
    adopted_hash: str | None = None


class DiLoCo:
    def __init__(
        self,
        model: torch.nn.Module,
        inner_optimizer: torch.optim.Optimizer,
        *,
        run: str,
        node: NodeThread,
        inner_steps: int = 50,
        outer_lr: float = 0.7,
        outer_momentum: float = 0.9,
        compression: str = "int8",
        allreduce_timeout_s: float = 60.0,
        join_existing: bool = True,
        ledger: RoundLedger | None = None,
        overlap: bool = False,
        aggregator: str = "mean",
        secure_aggregation: bool = False,
        dp: DpSettings | None = None,
    ) -> None:
        if inner_steps < 1:
            raise ValueError("inner_steps must be >= 1")
        if secure_aggregation:
            require_mean(aggregator)  # robust rules need the updates SecAgg hides
            if compression not in ("none", "int8"):  # its result stream: fp32 or int8
                raise ValueError(f"secure_aggregation supports compression 'none' or "
                                 f"'int8', not {compression!r}")  # fmt: skip
        self.model = model
        self.inner = inner_optimizer
        self.run = run
        self.ledger = ledger
        # with the ledger on, only admitted peers count: in groups, and in head votes
        # (state sync, catch-up, converge)
        self._admit: Admit | None = getattr(ledger, "admits", None)
        self.node_thread = node
        self.inner_steps = inner_steps
        self.outer = OuterOptimizer(lr=outer_lr, momentum=outer_momentum)
        self.feedback = ErrorFeedback(get_codec(compression))
        # DP: clip + noise each pseudo-gradient on this peer, before error feedback and
        # compression (see _encode_delta); the accountant counts one release per round.
        if dp is not None and not isinstance(dp, DpSettings):
            raise TypeError(f"dp must be a shoal.privacy.DpSettings, got {type(dp).__name__}")
        self.dp = dp.mechanism() if dp is not None else None
        self.compression = compression
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.global_flat = flatten_params(self.params)
        if self.outer.momentum_buffer is None:
            self.outer.momentum_buffer = torch.zeros_like(self.global_flat)
        self.round = 0
        self.local_steps = 0
        self.round_steps = 0
        self.round_samples = 0
        self._nominal_samples = 0  # samples of the first inner_steps steps of this round
        self.history: list[RoundLog] = []
        self.sync_s = 0.0  # seconds spent in sync(): waiting, averaging, catching up
        # sync_s by phase (the utilisation benchmark reports where the idle time goes)
        self.timings = dict.fromkeys(TIMING_KEYS, 0.0)
        # overlap: round r's averaging runs on the node loop while round r+1 computes;
        # its outer update is applied one round late (see _sync_overlapped).
        self.overlap = overlap
        self.aggregator = aggregator  # "mean" or a robust rule from shoal.aggregation
        self.secure_aggregation = secure_aggregation  # the group sees only the sum
        self._pending: concurrent.futures.Future[RoundOutcome] | None = None
        self._round_start: torch.Tensor | None = None
        self._pending_steps = 0
        # overlap: head publishes (a DHT put across the WAN) still in flight; checked,
        # not waited for, until flush
        self._publishing: list[concurrent.futures.Future[None]] = []
        assert node.node is not None
        self._node = node.node
        # (milestone, round) -> monotonic time; written on the node loop and by sync
        self._marks: dict[tuple[str, int], float] = {}
        self._marks_lock = threading.Lock()
        self._node.add_listener(self._mark_event)
        self._server: StateServer = node.call(self._make_server())
        self._averager: SwarmAverager = node.call(self._make_averager(allreduce_timeout_s))
        held = self._sync_from_swarm() if join_existing else None
        node.call(self._server.publish(held or self._snapshot()))
        self.node_thread.call(self._averager.begin(self.round))

    async def _make_server(self) -> StateServer:
        return StateServer(self._node, self.run)

    async def _make_averager(self, timeout_s: float) -> SwarmAverager:
        return SwarmAverager(
            self._node, self.run, self.compression, timeout_s, self._admit, self.aggregator,
            secure_aggregation=self.secure_aggregation,
        )  # fmt: skip

    def _mark(self, what: str, round_no: int) -> None:
        with self._marks_lock:
            self._marks[(what, round_no)] = time.monotonic()

    def _mark_event(self, ev: object) -> None:
        if isinstance(ev, RoundClosed):
            self._mark("closed", ev.round_no)
        elif isinstance(ev, GroupFormed):  # a re-formed group replaces the first
            self._mark("grouped", ev.round_no)

    def _phases(self, round_no: int) -> dict[str, float]:
        with self._marks_lock:
            m = {k: t for (k, r), t in self._marks.items() if r == round_no}
            self._marks = {k: t for k, t in self._marks.items() if k[1] > round_no}
        spans = {"close_to_sync_s": ("closed", "synced"),
                 "close_to_group_s": ("closed", "grouped"),
                 "group_to_averaged_s": ("grouped", "averaged")}  # fmt: skip
        return {n: round(m[b] - m[a], 3) for n, (a, b) in spans.items() if a in m and b in m}

    # -- torch optimizer surface -------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def step(self, samples: int = 1) -> RoundLog | None:
        """One inner step. After ``inner_steps`` of them, or as soon as the swarm has
        closed the round (it reached its target samples or deadline without waiting
        for us), this also runs the outer round.

        With ``overlap``, only the swarm's close ends a round: a peer past its
        ``inner_steps`` keeps computing instead of waiting for the slowest peer, and
        contributes what it has at the close (weighted by its samples)."""
        self.inner.step()
        self.local_steps += 1
        self.round_steps += 1
        self.round_samples += samples
        if self.round_steps <= self.inner_steps:
            self._nominal_samples = self.round_samples
        if self._averager.closed(self.compute_round):
            return self.sync()
        if self.overlap:
            self._raise_if_pending_failed()
        elif self.round_steps >= self.inner_steps:
            return self.sync()
        # With overlap every peer is mid-round at the close, and its group weight is
        # the samples it had reported by then: report each step so it lags by <= 1.
        if self.overlap or self.round_steps % PROGRESS_EVERY == 0:
            # a callback on the node's loop, not a task: nothing to wait for or leak
            self.node_thread.call_soon(
                self._averager.report, self.compute_round, self._reportable_samples()
            )
        return None

    def _reportable_samples(self) -> int:
        """Samples to count toward the swarm's target: with overlap, steps past
        ``inner_steps`` still train but count no more, so one fast peer cannot close
        the round alone before the others have announced it (seen: a peer that started
        first closed round 0 by itself and the two peers never grouped)."""
        if self.overlap and self.round_steps > self.inner_steps:
            return self._nominal_samples
        return self.round_samples

    def sync(self) -> RoundLog | None:
        """Average with the swarm now, apply the outer step, and start the next round.
        With ``overlap``, start this round's average and apply the previous one's
        outer step (None when there was none yet)."""
        t0 = time.monotonic()
        try:
            if self.overlap:
                return self._sync_overlapped()
            return self._sync()
        finally:
            # wall time not spent on inner steps: the compute-utilisation benchmark's input
            self.sync_s += time.monotonic() - t0

    @contextlib.contextmanager
    def _timed(self, key: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.timings[key] += time.monotonic() - t0

    def _encode_delta(self, start: torch.Tensor) -> torch.Tensor:
        """(start - local params), int8 round-tripped: exactly what the group averages."""
        with self._timed("encode_s"):
            delta = pseudo_gradient(start, flatten_params(self.params))
            if self.dp is not None:
                # Noise first, error feedback after: the residual it carries is then
                # (noised + old residual) - sent, post-processing of released values.
                # Taken against the raw delta it would hold -noise and undo it next round.
                delta = self.dp.privatize(delta)
                log.info(
                    "DP: update norm %.4g clipped to %.4g, noise std %.4g; epsilon %.4f "
                    "(delta %g) after %d releases", self.dp.last_norm, self.dp.clip_norm,
                    self.dp.noise_std, self.dp.epsilon_spent(), self.dp.delta, self.dp.releases,
                )  # fmt: skip
            # Error feedback: what int8 loses this round is added to the next round's delta.
            encoded = self.feedback.encode("delta", delta)
            return get_codec(self.compression).decode(encoded).reshape(-1).contiguous()

    def _commit(self, round_no: int, delta_q: torch.Tensor, samples: int) -> None:
        if self.ledger is not None:  # in the signed feed before anyone can use it
            with self._timed("ledger_commit_s"):
                self.ledger.commit_update(round_no, delta_q.numpy().tobytes(), samples)

    def _sync(self) -> RoundLog:
        self._mark("synced", self.round)
        delta_q = self._encode_delta(self.global_flat)
        samples = max(1, self.round_samples)
        self._commit(self.round, delta_q, samples)
        with self._timed("average_s"):
            outcome = self.node_thread.call(self._averager.finish(self.round, delta_q, samples))
        self._mark("averaged", self.round)
        with self._timed("apply_s"):
            alone = len(outcome.group.members) == 1
            entry = self._apply_outcome(outcome, "done", self.round_steps, anchor=not alone)
        with self._timed("catch_up_s"):
            # Averaged alone (a fallback: we missed the group) while others ran: wait
            # for the heads of those that were in our round, so the vote sees their new
            # state and we adopt it now. Without the wait we started the next round from
            # our own model and the group we joined then mixed two starting states.
            adopted = self._begin_round(expect=len(outcome.group.members) - 1, after_solo=alone)
        if alone and not adopted:
            # The vote kept our state (a lone swarm, or the others are behind): then
            # it is the round's model and we anchor it. Outvoted, we anchor nothing:
            # the contract takes one anchor a round, first come, and a solo fallback
            # (no exchange, so it finishes first) would have put a model on-chain
            # that no peer went on from (seen in the chaos suite's last round).
            self._anchor(outcome, entry.model_hash, entry.round - 1)
        return entry

    def _apply_outcome(
        self, outcome: RoundOutcome, verb: str, steps: int, anchor: bool = True
    ) -> RoundLog:
        """Outer step with the group's average; record, anchor and publish the round.
        ``anchor=False``: the caller anchors after the head vote (a solo round)."""
        res = outcome.result
        self.outer.step(self.global_flat, res.average)
        unflatten_into(self.global_flat, self.params)
        self.round += 1
        phases = self._phases(self.round - 1)
        h = model_hash(self._named_params())
        if anchor:
            self._anchor(outcome, h, self.round - 1)
        entry = RoundLog(
            self.round, h, len(outcome.group.members), outcome.group.total_samples,
            res.bytes_sent, res.bytes_received,
            {p.short(): why for p, why in res.excluded.items()}, steps, phases,
            epsilon=self.epsilon,
        )  # fmt: skip
        self.history.append(entry)
        self._publish_head()
        log.info("round %d %s: hash %s, group of %d", self.round, verb, h[:12], entry.group_size)
        return entry

    def _anchor(self, outcome: RoundOutcome, h: str, round_no: int) -> None:
        if self.ledger is not None:
            # credit only members whose update is in every shard of the average
            counted = set(outcome.result.contributors)
            members = [m for m in outcome.group.members if m.peer_id in counted]
            self.ledger.anchor_round(round_no, h, members)

    def _publish_head(self) -> None:
        """Serve the new state and put its head in the DHT. Without overlap we wait
        (the head vote that follows reads it); with overlap nothing on this thread
        needs the put done, and across a WAN it took ~0.4 s a round, so it is checked
        at the next publish and waited for only in ``flush``."""
        fut = self.node_thread.submit(self._server.publish(self._snapshot()))
        if not self.overlap:
            fut.result()
            return
        self._publishing = [f for f in self._publishing if not _settled(f)]
        self._publishing.append(fut)

    @property
    def epsilon(self) -> float | None:
        """Epsilon spent so far by this peer's released updates (None: DP off)."""
        return self.dp.epsilon_spent() if self.dp is not None else None

    @property
    def compute_round(self) -> int:
        """The swarm round the inner steps now running belong to (with overlap, one
        ahead of ``round``, the outer updates applied, while an average is pending)."""
        return self.round + (1 if self._pending is not None else 0)

    @property
    def pending_round(self) -> int | None:
        return self.round if self._pending is not None else None

    def _sync_overlapped(self) -> RoundLog | None:
        """One-step-delayed outer update.

        At the close of compute round c: the pseudo-gradient of c is (params at c's
        start) - (params now); it goes into the ledger's feed (if any) before anyone can
        use it. Round c-1's average ran on the node loop during c's inner steps and is
        done by now (the swarm cannot close c before this peer began it, which it does
        once c-1's average is done); its outer step is applied to the global params and
        anchored, and the model restarts from them. Then c's average starts in the
        background (after it, the node announces round c+1) and we return at once.
        Members of a group apply the same average to the same global params, so they
        stay bit-identical at every outer step, as without overlap.
        """
        c = self.compute_round
        self._mark("synced", c)
        local = flatten_params(self.params)
        start = self._round_start if self._round_start is not None else self.global_flat
        delta_q = self._encode_delta(start)
        samples = max(1, self.round_samples)
        self._commit(c, delta_q, samples)
        with self._timed("wait_pending_s"):  # ~0: see above; only an explicit sync() waits
            outcome = self._take_pending()
        entry = None
        if outcome is not None:
            with self._timed("apply_s"):
                entry = self._apply_outcome(outcome, "applied", self._pending_steps)
        if entry is None:  # first round: keep training from where the inner steps got to
            self._round_start = local.clone()
        else:
            # Eager: go on from the new global params plus this round's own progress.
            # That progress is in the average that lands next round; restarting from the
            # global params alone dropped it from the model until then, and with outer
            # momentum the stale steps diverged (benchmarks/bench_overlap_loss.py).
            self._round_start = self.global_flat + (local - start)
            unflatten_into(self._round_start, self.params)
        self._pending_steps = self.round_steps
        self.round_steps = 0
        self.round_samples = 0
        self._pending = self.node_thread.submit(self._average_then_begin(c, delta_q, samples))
        return entry

    async def _average_then_begin(self, c: int, delta: torch.Tensor, samples: int) -> RoundOutcome:
        outcome = await self._averager.finish(c, delta, samples)
        self._mark("averaged", c)
        await self._averager.begin(c + 1)
        # the steps of c+1 done while c averaged count now, not at the next report
        self._averager.report(c + 1, self._reportable_samples())
        return outcome

    def _take_pending(self) -> RoundOutcome | None:
        """The pending average's outcome (blocks if it is not done; raises its error)."""
        if self._pending is None:
            return None
        outcome = self._pending.result()
        self._pending = None
        return outcome

    def _raise_if_pending_failed(self) -> None:
        """A failed background average must stop training here: the swarm would never
        start the next round for us, so its close (the only other exit) never comes."""
        p = self._pending
        if p is not None and p.done() and p.exception() is not None:
            self._take_pending()

    def flush(self) -> RoundLog | None:
        """Overlap mode: finish the pending round now (call after the last round). This
        is idle time: the last round's average has no next round to hide behind."""
        t0 = time.monotonic()
        try:
            with self._timed("flush_s"):
                outcome = self._take_pending()
                entry = None
                if outcome is not None:
                    entry = self._apply_outcome(outcome, "applied", self._pending_steps)
                for f in self._publishing:  # the final head, for joiners and verifiers
                    _settled(f, wait=True)
                self._publishing = []
                return entry
        finally:
            self.sync_s += time.monotonic() - t0

    def converge(self, timeout_s: float = CONVERGE_TIMEOUT_S) -> bool:
        """After the last round: stay, serving our state, until every live peer of the
        run publishes the same head as we do; adopt the swarm's choice if we are
        outvoted (we averaged alone, or sat on the other side of a partition).

        Without it a straggler whose last group formed without it would end the run on
        a model of its own once the others had exited (seen in the chaos suite).
        Bounded: returns False if the live peers still disagree after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self._catch_up()
            mine = self._server.snapshot
            heads = self.node_thread.call(read_heads(self._node, self.run, self._admit))
            alive = self.node_thread.call(_alive_ids(self._node))
            live = {(r, h) for p, r, h in heads if str(p) in alive or p == self._node.peer_id}
            if mine is not None and live <= {(mine.round, mine.state_hash)}:
                return True
            if time.monotonic() > deadline:
                log.warning("live peers still disagree after %.0f s: %s", timeout_s, sorted(live))
                return False
            time.sleep(CONVERGE_POLL_S)

    def _begin_round(self, expect: int = 0, after_solo: bool = False) -> bool:
        """Catch up, then open the next round; True if we adopted the swarm's state."""
        adopted = self._catch_up(expect, after_solo)
        snap = self._server.snapshot
        log.info("round %d starts from state %s", self.round, snap.state_hash[:12] if snap else "?")
        self.round_steps = 0
        self.round_samples = 0
        self.node_thread.call(self._averager.begin(self.round))
        return adopted

    # -- state ---------------------------------------------------------------------
    def _snapshot(self) -> Snapshot:
        assert self.outer.momentum_buffer is not None
        data = (
            self.global_flat.numpy().tobytes()
            + self.outer.momentum_buffer.contiguous().numpy().tobytes()
        )
        return Snapshot(self.round, data, state_hash(data))

    def _catch_up(self, expect: int = 0, after_solo: bool = False) -> bool:
        """Adopt the swarm's verified state if it moved on without us (we missed a
        round, or averaged alone while the others agree on another state).

        ``expect``: peers (besides us) that should publish a head for our round soon;
        we wait up to HEADS_WAIT_S for them so the vote is not a race. ``after_solo``:
        we just averaged alone, so we expect every peer whose head showed it in the
        round we finished (a lone swarm finds none and does not wait).
        """
        mine = self._server.snapshot
        deadline = time.monotonic() + (HEADS_WAIT_S if expect or after_solo else 0.0)
        while True:
            heads = self.node_thread.call(read_heads(self._node, self.run, self._admit))
            others = [(r, h) for p, r, h in heads if p != self._node.peer_id]
            if after_solo:
                expect = max(expect, sum(r >= self.round - 1 for r, _ in others))
            if sum(r >= self.round for r, _ in others) >= expect or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if not others or mine is None:
            return False
        top = max(r for r, _ in others)
        behind = top > self.round
        same_round = [h for r, h in others if r == self.round] + [mine.state_hash]
        outvoted = choose_head(same_round) != mine.state_hash
        if not (behind or outvoted):
            return False
        log.warning(
            "state diverged from the swarm (round %d, swarm at %d); resyncing", self.round, top
        )
        size = 2 * 4 * self.global_flat.numel()
        try:
            snap = self.node_thread.call(
                fetch_state(self._node, self.run, size, wait_s=5.0, admit=self._admit)
            )
        except RuntimeError as exc:  # peers gone (run over) or all served bad state
            log.warning("could not resync: %s", exc)
            return False
        if snap is None:
            return False
        last = self.history[-1] if self.history else None
        self._load_snapshot(snap)
        if last is not None:
            last.adopted_hash = model_hash(self._named_params())
        self.node_thread.call(self._server.publish(self._snapshot()))
        return True

    def _sync_from_swarm(self) -> Snapshot | None:
        """A joiner adopts the swarm's state at the next round boundary; returns the
        state it then holds (snapshotted once, for the head publish), if it made one.

        Joining mid-round would leave us out of groups that formed before our
        progress was seen, so we wait until the swarm finishes the round it is in,
        then download that state (hash-checked) and start the next round with it.
        """
        heads = self.node_thread.call(read_heads(self._node, self.run, self._admit))
        if not heads:
            log.info("no peer has state for run %s yet; starting from this model", self.run)
            return None
        current = max(r for _, r, _ in heads)
        # current == 0: the run has not finished a round; take the round-0 state now
        # (so every peer starts from the same model) and train round 0 with the rest.
        deadline = time.monotonic() + (JOIN_WAIT_S if current > 0 else 0.0)
        while time.monotonic() < deadline:
            heads = self.node_thread.call(read_heads(self._node, self.run, self._admit))
            if heads and max(r for _, r, _ in heads) > current:
                break
            time.sleep(JOIN_POLL_S)
        size = 2 * 4 * self.global_flat.numel()
        mine = self._snapshot()
        snap = self.node_thread.call(
            fetch_state(self._node, self.run, size, wait_s=5.0, admit=self._admit, have=mine)
        )
        if snap is not None and snap is not mine:
            self._load_snapshot(snap)
        return snap or mine

    def _load_snapshot(self, snap: Snapshot) -> None:
        n = self.global_flat.numel()
        both = torch.frombuffer(bytearray(snap.data), dtype=torch.float32)
        self.global_flat.copy_(both[:n])
        self.outer.momentum_buffer = both[n:].clone()
        unflatten_into(self.global_flat, self.params)
        self.round = snap.round
        log.info("joined run %s at round %d", self.run, self.round)

    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "global": self.global_flat.clone(),
            "outer": self.outer.state_dict(),
            "inner": self.inner.state_dict(),
            "feedback": self.feedback.state_dict(),
            **({"privacy": self.dp.state_dict()} if self.dp is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = int(state["round"])
        self.global_flat.copy_(state["global"])
        self.outer.load_state_dict(state["outer"])
        self.inner.load_state_dict(state["inner"])
        self.feedback.load_state_dict(state["feedback"])
        if self.dp is not None and "privacy" in state:  # keep counting what was spent
            self.dp.load_state_dict(state["privacy"])
        unflatten_into(self.global_flat, self.params)

    def save_checkpoint(self, path: str | Path) -> str:
        """Write the global model + outer momentum as safetensors; returns the model hash.
        The model's own params (mid-round, or ahead of the global ones with overlap)
        are left as they were."""
        own = flatten_params(self.params)
        unflatten_into(self.global_flat, self.params)
        try:
            named = self._named_params()
            return save_checkpoint(
                path,
                Checkpoint(named, self.round, self.outer.momentum_buffer, {"run": self.run}),
            )
        finally:
            unflatten_into(own, self.params)

    def readout(self) -> dict[str, torch.Tensor]:
        """The model to use, by name: the outer optimizer's iterate at the global params
        (`OuterOptimizer.readout`), not the look-ahead point the peers train from. Every
        peer that shares the global state gets the same tensors. Training is unchanged:
        call it after the last round (and `flush` with overlap), to evaluate or export."""
        named = {
            n: torch.empty(p.shape) for n, p in self.model.named_parameters() if p.requires_grad
        }
        unflatten_into(self.outer.readout(self.global_flat), named.values())
        return named

    def save_model(self, path: str | Path) -> str:
        """Write `readout` as safetensors (params only, no optimizer state): the file to
        evaluate or serve, where `save_checkpoint` writes the state to resume from.
        Returns its model hash."""
        return save_checkpoint(
            path, Checkpoint(self.readout(), self.round, None, {"run": self.run, "kind": "readout"})
        )

    def _named_params(self) -> dict[str, torch.Tensor]:
        """The global params by name: what checkpoints store and model hashes cover."""
        return {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}

    @staticmethod
    def load_checkpoint(path: str | Path) -> Checkpoint:
        return load_checkpoint(path)


def _settled(fut: concurrent.futures.Future[None], wait: bool = False) -> bool:
    """Is the head publish ``fut`` over (waiting for it if ``wait``)? A failed one is
    logged: the next round's publish replaces the head anyway."""
    if not (wait or fut.done()):
        return False
    try:
        fut.result()
    except Exception as exc:
        log.warning("publishing the state head failed: %s", exc)
    return True


async def _alive_ids(node: Node) -> set[str]:
    """Peer ids SWIM holds alive (read on the node's loop, which owns the view)."""
    return {m["peer_id"] for m in node.peers() if m["state"] == "alive"}


def start_node(
    data_dir: str | Path,
    *,
    run: str,
    target_samples: int,
    bootstrap: list[str] | tuple[str, ...] = (),
    listen: str = "127.0.0.1:0",
    deadline_s: float = 120.0,
    group_size: int = 16,
) -> NodeThread:
    """Start a node for ``run`` in a background thread, ready for ``DiLoCo(node=...)``.

    ``bootstrap`` holds ``PEERID@HOST:PORT`` strings; ``target_samples`` is the swarm
    total at which a round closes (e.g. peers * inner_steps * batch size).
    """
    from shoal.ledger.messages import LEDGER_MESSAGES
    from shoal.rounds.config import RoundConfig
    from shoal.runtime.node import NodeConfig
    from shoal.training.state_sync import STATE_MESSAGES
    from shoal.wire.contact import Contact, split_addr

    host, port = split_addr(listen)
    rounds = RoundConfig(
        target_samples=target_samples,
        deadline_s=deadline_s,
        group_size=group_size,
        join_window_s=2.0,
        poll_interval_s=2.0,
        min_poll_interval_s=0.25,
        publish_interval_s=1.0,
    )
    thread = NodeThread(
        NodeConfig(
            data_dir=Path(data_dir),
            listen_host=host,
            listen_port=port,
            bootstrap=[Contact.parse(b) for b in bootstrap],
            run=run,
            rounds=rounds,
            extra_messages=STATE_MESSAGES + LEDGER_MESSAGES,
        )
    )
    thread.start()
    return thread
