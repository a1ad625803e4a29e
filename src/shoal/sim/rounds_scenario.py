"""``shoal sim rounds``: DiLoCo outer rounds across a simulated swarm.

Each peer is a PeerCore (DHT + SWIM) plus a RoundCore; ``RoundPeer`` is the glue that
turns the round core's DhtPutRequest / DhtGetRequest into signed DHT puts and gets
(it is written so it can move into ``peer/core.py`` as is). Training and averaging are
cost models, not tensors:

- a peer processes ``samples_per_s`` (x0.5..1.5; slow peers x``slow_factor``) and
  reports its running total every ``tick_s``;
- a group of g averages with a butterfly/ring all-reduce: each member sends
  2 (g-1)/g * model_bytes, taking 2 (g-1) * (latency + model_bytes / (g * bandwidth));
- a group holding a crashed peer notices after ``fail_detect_s`` and reports it; the
  leader re-forms the group without it.

Peers run their rounds back to back on their own; ``dead_fraction`` of them crash in
the middle of round 0, after announcing progress. Keys come from the seed, so the
trace hash replays exactly.
"""

from __future__ import annotations

import random
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO, Any

from shoal.dht.core import DhtConfig
from shoal.effects import Action, Emit, SetTimer
from shoal.identity import Identity, PeerId
from shoal.membership.config import SwimConfig
from shoal.peer.round_peer import RoundPeer, rounds_codec
from shoal.rounds import (
    GroupFallback,
    GroupFormed,
    Phase,
    RoundClosed,
    RoundConfig,
    RoundDone,
)
from shoal.sim.engine import Simulator, sim_addr, simulation_gc
from shoal.sim.network import NetworkModel
from shoal.sim.verify_cache import cached_signature_checks
from shoal.wire.contact import Contact

Progress = Callable[[str, int, int], None]


@dataclass(slots=True)
class RoundsScenarioConfig:
    nodes: int = 100
    seed: int = 1
    rounds: int = 3
    group_size: int = 16
    model_bytes: int = 100_000_000
    bandwidth_bytes_per_s: float = 125_000_000.0  # 1 Gbit/s per peer
    samples_per_s: float = 100.0
    # The target is what the whole swarm would process in this long at full speed.
    target_round_s: float = 20.0
    deadline_s: float = 60.0
    join_window_s: float = 3.0
    poll_interval_s: float = 5.0
    dead_fraction: float = 0.05
    slow_fraction: float = 0.1
    slow_factor: float = 0.1
    fail_detect_s: float = 5.0
    tick_s: float = 1.0
    loss: float = 0.0
    joins_per_s: float = 200.0
    settle_s: float = 20.0
    swim_view: int = 64
    # 0: RoundConfig.shards_for(nodes, group_size)
    progress_shards: int = 0
    estimate_shards: int = 1


class _SimRoundPeer(RoundPeer):
    """RoundPeer plus the training and averaging cost models."""

    scenario: RoundsScenario
    index: int
    rate: float
    pending: int
    round_start: float

    def begin(self, now: float, round_no: int) -> list[Action]:
        self.round_start = now
        acts = self.rounds.start_round(now, round_no, round_no)
        tick = SetTimer("train/tick", now + self.scenario.cfg.tick_s)
        return [*self.from_rounds(now, acts), tick]

    def on_timer(self, now: float, name: str) -> list[Action]:
        if not name.startswith("train/"):
            return super().on_timer(now, name)
        rc = self.rounds
        cfg = self.scenario.cfg
        if name == "train/tick" and rc.phase in (Phase.TRAINING, Phase.CLOSING):
            samples = int(self.rate * (now - self.round_start))
            out = self.from_rounds(now, rc.report_progress(now, samples))
            return [*out, SetTimer("train/tick", now + cfg.tick_s)]
        if name == "train/avg" and rc.phase is Phase.FORMED and self.pending == rc.attempt:
            out = self.from_rounds(now, rc.complete_round(now, rc.round_no))
            if rc.round_no + 1 < cfg.rounds:
                out += self.begin(now, rc.round_no + 1)
            return out
        if name == "train/fail" and rc.phase is Phase.FORMED and self.pending == rc.attempt:
            dead = [m.peer_id for m in rc.members if self.scenario.is_dead(m.peer_id)]
            return self.from_rounds(now, rc.report_failed(now, rc.round_no, dead))
        return []

    def from_rounds(self, now: float, actions: list[Action]) -> list[Action]:
        out = super().from_rounds(now, actions)
        for a in list(out):
            if isinstance(a, Emit) and isinstance(a.event, GroupFormed):
                g = a.event
                self.pending = g.attempt
                if any(self.scenario.is_dead(m.peer_id) for m in g.members):
                    out.append(SetTimer("train/fail", now + self.scenario.cfg.fail_detect_s))
                    out.append(SetTimer("train/avg", None))
                else:
                    out.append(
                        SetTimer("train/avg", now + self.scenario.allreduce_s(len(g.members)))
                    )
                    out.append(SetTimer("train/fail", None))
        return out


class RoundsScenario:
    def __init__(
        self,
        cfg: RoundsScenarioConfig,
        trace_file: IO[str] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.net = NetworkModel(loss=cfg.loss)
        self.sim = Simulator(cfg.seed, self.net, codec=rounds_codec(), trace_file=trace_file)
        self.sim.on_emit = self._on_emit
        self.progress = progress or (lambda phase, done, total: None)
        self.latency_s = self.net.base_latency_s + self.net.jitter_s / 2
        shards = cfg.progress_shards or RoundConfig.shards_for(cfg.nodes, cfg.group_size)
        target = int(cfg.nodes * cfg.samples_per_s * cfg.target_round_s)
        self.round_cfg = RoundConfig(
            target_samples=max(1, target),
            deadline_s=cfg.deadline_s,
            group_size=cfg.group_size,
            join_window_s=cfg.join_window_s,
            poll_interval_s=cfg.poll_interval_s,
            publish_interval_s=cfg.poll_interval_s,
            progress_shards=shards,
            estimate_shards=cfg.estimate_shards,
        )
        self.peers: list[_SimRoundPeer] = []
        self.dead: set[int] = set()
        self._dead_ids: set[PeerId] = set()
        self.started: dict[tuple[int, int], float] = {}
        self.closed: dict[tuple[int, int], tuple[float, RoundClosed]] = {}
        self.done: dict[tuple[int, int], float] = {}
        self.final_group: dict[tuple[int, int], tuple[float, GroupFormed]] = {}
        self.data_bytes = [0.0] * cfg.nodes
        self.fallbacks = 0
        self.reforms = 0
        self.join_wall_s = 0.0
        self.cpu0 = 0.0

    def is_dead(self, pid: PeerId) -> bool:
        return pid in self._dead_ids

    def allreduce_s(self, g: int) -> float:
        if g <= 1:
            return 0.0
        chunk = self.cfg.model_bytes / g
        return 2 * (g - 1) * (self.latency_s + chunk / self.cfg.bandwidth_bytes_per_s)

    def _on_emit(self, index: int, now: float, ev: object) -> None:
        if isinstance(ev, RoundClosed):
            self.closed[(index, ev.round_no)] = (now, ev)
        elif isinstance(ev, GroupFormed):
            g = len(ev.members)
            if g > 1 and not any(self.is_dead(m.peer_id) for m in ev.members):
                self.data_bytes[index] += 2 * (g - 1) / g * self.cfg.model_bytes
            if ev.attempt > 0:
                self.reforms += 1
            self.final_group[(index, ev.round_no)] = (now, ev)
        elif isinstance(ev, GroupFallback):
            self.fallbacks += 1
        elif isinstance(ev, RoundDone):
            self.done[(index, ev.round_no)] = now
            if ev.round_no + 1 < self.cfg.rounds:
                self.started[(index, ev.round_no + 1)] = now

    def run(self) -> dict[str, Any]:
        with cached_signature_checks() as checks, simulation_gc() as freeze_gc:
            report = self._run(freeze_gc)
        report["signature_checks"] = checks.checks
        report["signature_checks_asked"] = checks.calls
        return report

    def _run(self, freeze_gc: Callable[[], None] = lambda: None) -> dict[str, Any]:
        cfg, sim = self.cfg, self.sim
        t_wall = time.perf_counter()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu0 = usage.ru_utime + usage.ru_stime
        n = cfg.nodes
        dht_cfg = DhtConfig()
        swim_cfg = SwimConfig(max_members=cfg.swim_view)
        for i in range(n):
            ident = Identity.from_seed(self.rng.randbytes(32))
            contact = Contact(ident.peer_id, sim_addr(i))
            peer = _SimRoundPeer(
                contact,
                ident,
                random.Random(self.rng.getrandbits(64)),
                f"sim-run-{cfg.seed}",
                self.round_cfg,
                dht_cfg,
                swim_cfg,
            )
            peer.scenario = self
            peer.index = i
            peer.pending = -1
            slow = self.rng.random() < cfg.slow_fraction
            peer.rate = (
                cfg.samples_per_s * (0.5 + self.rng.random()) * (cfg.slow_factor if slow else 1)
            )
            self.peers.append(peer)
            sim.add_host(contact, peer)

        for i in range(n):
            sim.run_until(i / cfg.joins_per_s)
            boot = [] if i == 0 else [sim.contacts[self.rng.randrange(i)]]
            sim.apply(i, self.peers[i].start(sim.now, boot))
            if i % 100 == 0:
                self.progress("joining", i, n)
        sim.run_until(sim.now + cfg.settle_s)
        freeze_gc()  # the joined swarm lives until the end: stop walking it
        self.join_wall_s = time.perf_counter() - t_wall

        # rounds
        sim.counting = True
        t0 = sim.now
        for i in range(n):
            self.started[(i, 0)] = t0
            sim.apply(i, self.peers[i].begin(t0, 0))
        k = int(n * cfg.dead_fraction)
        victims = sorted(self.rng.sample(range(n), k)) if k else []
        crash_at = t0 + cfg.target_round_s / 2
        # In steps, to report progress; the events and their order are the same.
        while sim.now < crash_at:
            sim.run_until(min(crash_at, sim.now + 5.0))
            self.progress(f"round 0 before the crash, t={sim.now - t0:.0f}s", 0, n)
        for v in victims:
            self.dead.add(v)
            self._dead_ids.add(sim.contacts[v].peer_id)
            sim.crash(v)
        live = [i for i in range(n) if i not in self.dead]
        limit = t0 + cfg.rounds * (cfg.deadline_s + 120.0)
        while sim.now < limit:
            sim.run_until(sim.now + 5.0)
            finished = sum(1 for i in live if (i, cfg.rounds - 1) in self.done)
            self.progress(f"rounds, t={sim.now - t0:.0f}s", finished, len(live))
            if finished == len(live):
                break
        return self._report(live, t_wall, t0)

    def _report(self, live: list[int], t_wall: float, t0: float) -> dict[str, Any]:
        cfg, sim = self.cfg, self.sim
        usage = resource.getrusage(resource.RUSAGE_SELF)
        n_live = len(live)
        rounds_completed = sum(
            1 for r in range(cfg.rounds) if all((i, r) in self.done for i in live)
        )
        durations = [
            self.done[(i, r)] - self.started[(i, r)]
            for i in live
            for r in range(cfg.rounds)
            if (i, r) in self.done and (i, r) in self.started
        ]
        form = [
            self.final_group[(i, r)][0] - self.closed[(i, r)][0]
            for i in live
            for r in range(cfg.rounds)
            if (i, r) in self.final_group and (i, r) in self.closed
        ]
        groups = {
            (r, ev.leader.raw, ev.attempt, tuple(m.peer_id.raw for m in ev.members)): len(
                ev.members
            )
            for (i, r), (_, ev) in self.final_group.items()
            if i in live
        }
        sizes = list(groups.values())
        reasons: dict[str, int] = {}
        for (i, _), (_, ev) in self.closed.items():
            if i in live:
                reasons[ev.reason] = reasons.get(ev.reason, 0) + 1
        per = n_live * cfg.rounds
        sent = sim.sent
        dht_b = sum(sent.get("dht", [0])[i] for i in live) if "dht" in sent else 0
        round_b = sum(sent.get("round", [0])[i] for i in live) if "round" in sent else 0
        swim_b = sum(sent.get("swim", [0])[i] for i in live) if "swim" in sent else 0
        nb = max(2, n_live)
        b = cfg.model_bytes
        ring_s = 2 * (nb - 1) * (self.latency_s + b / nb / cfg.bandwidth_bytes_per_s)
        g_mean = statistics.mean(sizes) if sizes else 0.0
        rejections: dict[str, int] = {}
        for i in live:
            for k, v in self.peers[i].rounds.rejections.items():
                rejections[k] = rejections.get(k, 0) + v
        return {
            "nodes": cfg.nodes,
            "seed": cfg.seed,
            "rounds": cfg.rounds,
            "rounds_completed": rounds_completed,
            "peer_rounds_done": sum(1 for (i, _) in self.done if i in live),
            "live_peers": n_live,
            "dead_peers": len(self.dead),
            "group_size": cfg.group_size,
            "progress_shards": self.round_cfg.progress_shards,
            "mean_group_size": round(g_mean, 2),
            "groups": len(sizes),
            "fallbacks": self.fallbacks,
            "reforms": self.reforms,
            "close_reasons": reasons,
            "median_round_s": round(statistics.median(durations), 3) if durations else None,
            "median_close_to_group_s": round(statistics.median(form), 3) if form else None,
            "group_allreduce_s": round(self.allreduce_s(round(g_mean)), 3),
            "control_bytes_per_peer_per_round": round((dht_b + round_b) / per),
            "round_msg_bytes_per_peer_per_round": round(round_b / per),
            "swim_bytes_per_peer_per_round": round(swim_b / per),
            "data_bytes_per_peer_per_round": round(sum(self.data_bytes[i] for i in live) / per),
            "ring_baseline_bytes_per_peer": round(2 * (nb - 1) / nb * b),
            "ring_baseline_allreduce_s": round(ring_s, 3),
            "rejections": dict(sorted(rejections.items())),
            "virtual_s": round(sim.now - t0, 3),
            "round_config": {k: v for k, v in asdict(self.round_cfg).items() if k != "group_seed"},
            "trace_sha256": sim.trace_sha256,
            "wall_s": round(time.perf_counter() - t_wall, 2),
            "join_wall_s": round(self.join_wall_s, 2),
            "messages_delivered": sim.delivered,
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            # CPU seconds of this process: on a busy machine wall time says little.
            "cpu_s": round(usage.ru_utime + usage.ru_stime - self.cpu0, 1),
        }


def run_rounds_scenario(
    cfg: RoundsScenarioConfig,
    trace_file: IO[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    return RoundsScenario(cfg, trace_file, progress).run()


__all__ = [
    "RoundPeer",
    "RoundsScenario",
    "RoundsScenarioConfig",
    "rounds_codec",
    "run_rounds_scenario",
]
