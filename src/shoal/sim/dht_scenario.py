"""``shoal sim dht``: a whole swarm of PeerCores in the simulator.

Phases, all in virtual time:
1. join: peers start one after another, each bootstrapping from a random earlier peer;
2. settle, then measure random lookups from random peers against brute force;
3. crash a fraction of peers at once and count protocol periods until every live
   peer that held a crashed peer in its SWIM view has declared it dead;
4. measure lookups again among the survivors.

Peer keys come from the seed, so a seed fixes everything and the trace hash proves it.
"""

from __future__ import annotations

import math
import random
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from shoal.dht.core import DhtConfig
from shoal.dht.events import LookupDone
from shoal.identity import Identity
from shoal.membership.config import SwimConfig
from shoal.membership.events import MemberDead
from shoal.membership.state import MemberState
from shoal.peer.core import PeerCore, peer_codec
from shoal.sim.engine import Simulator, sim_addr
from shoal.sim.network import NetworkModel
from shoal.wire.contact import Contact

Progress = Callable[[str, int, int], None]


@dataclass(slots=True)
class ScenarioConfig:
    nodes: int = 1000
    seed: int = 1
    crash_fraction: float = 0.1
    lookups: int = 1000
    loss: float = 0.0
    # Peers join at this rate; real swarms do not start 10k peers in the same instant.
    joins_per_s: float = 200.0
    settle_s: float = 30.0
    max_convergence_periods: int = 200
    # SWIM view per peer. Bounded so a 10k swarm costs O(view) per peer, not O(n).
    swim_view: int = 64


class DhtScenario:
    def __init__(
        self,
        cfg: ScenarioConfig,
        trace_file: IO[str] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.sim = Simulator(
            cfg.seed, NetworkModel(loss=cfg.loss), codec=peer_codec(), trace_file=trace_file
        )
        self.sim.on_emit = self._on_emit
        self.progress = progress or (lambda phase, done, total: None)
        self.swim_cfg = SwimConfig(max_members=cfg.swim_view)
        self.dht_cfg = DhtConfig()
        self.cores: list[PeerCore] = []
        self.lookup_results: dict[tuple[int, int], LookupDone] = {}
        self.pending_dead: set[tuple[int, int]] = set()
        self.false_dead = 0
        self.crashed: set[int] = set()

    def _on_emit(self, index: int, now: float, ev: object) -> None:
        if isinstance(ev, LookupDone):
            self.lookup_results[(index, ev.op_id)] = ev
        elif isinstance(ev, MemberDead):
            dead = _index(ev.contact.addr)
            self.pending_dead.discard((index, dead))
            if dead not in self.crashed and index not in self.crashed:
                self.false_dead += 1

    def run(self) -> dict[str, Any]:
        cfg, sim = self.cfg, self.sim
        t_wall = time.perf_counter()
        n = cfg.nodes
        for i in range(n):
            ident = Identity.from_seed(self.rng.randbytes(32))
            contact = Contact(ident.peer_id, sim_addr(i))
            core = PeerCore(
                contact, random.Random(self.rng.getrandbits(64)), self.dht_cfg, self.swim_cfg
            )
            self.cores.append(core)
            sim.add_host(contact, core)

        # 1. join
        for i in range(n):
            sim.run_until(i / cfg.joins_per_s)
            boot = [] if i == 0 else [sim.contacts[self.rng.randrange(i)]]
            sim.apply(i, self.cores[i].start(sim.now, boot))
            if i % 100 == 0:
                self.progress("joining", i, n)
        sim.run_until(sim.now + cfg.settle_s)

        # 2. lookups on the healthy swarm
        hops, ok = self._lookups(list(range(n)), "lookups")

        # 3. crash and time SWIM convergence
        k = int(n * cfg.crash_fraction)
        self.crashed = set(self.rng.sample(range(1, n), k)) if k else set()
        live = [i for i in range(n) if i not in self.crashed]
        for c in sorted(self.crashed):
            sim.crash(c)
        for i in live:
            for m in self.cores[i].swim.members():
                c = _index(m.contact.addr)
                if c in self.crashed and m.state is not MemberState.DEAD:
                    self.pending_dead.add((i, c))
        pairs = len(self.pending_dead)
        period = self.swim_cfg.protocol_period_s
        rounds = 0
        while self.pending_dead and rounds < cfg.max_convergence_periods:
            rounds += 1
            sim.run_until(sim.now + period)
            # a peer can also forget a crashed member (evicted from a full view)
            self.pending_dead = {(i, c) for (i, c) in self.pending_dead if self._holds_alive(i, c)}
            self.progress("converging", pairs - len(self.pending_dead), pairs)
        converged = not self.pending_dead

        # 4. lookups among survivors
        hops2, ok2 = self._lookups(live, "lookups after crash")

        all_hops = sorted(h for h in hops + hops2 if h >= 0)
        return {
            "nodes": n,
            "seed": cfg.seed,
            "lookups": len(hops) + len(hops2),
            "lookup_success": round((ok + ok2) / max(1, len(hops) + len(hops2)), 4),
            "lookup_success_before_crash": round(ok / max(1, len(hops)), 4),
            "lookup_success_after_crash": round(ok2 / max(1, len(hops2)), 4),
            "median_hops": statistics.median(all_hops) if all_hops else None,
            "p99_hops": all_hops[min(len(all_hops) - 1, int(0.99 * len(all_hops)))]
            if all_hops
            else None,
            "log2_n": round(math.log2(n), 2),
            "crashed": len(self.crashed),
            "dead_pairs_to_detect": pairs,
            "membership_converged": converged,
            "membership_convergence_rounds": rounds if converged else None,
            "false_dead_declarations": self.false_dead,
            "messages_delivered": sim.delivered,
            "messages_dropped": sim.dropped,
            "virtual_s": round(sim.now, 3),
            "trace_sha256": sim.trace_sha256,
            "wall_s": round(time.perf_counter() - t_wall, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }

    def _holds_alive(self, i: int, c: int) -> bool:
        m = self.cores[i].swim.member(self.sim.contacts[c].peer_id)
        return m is not None and m.state is not MemberState.DEAD

    def _lookups(self, live: list[int], phase: str) -> tuple[list[int], int]:
        """Run ``lookups`` random lookups; success = found the live peer truly closest."""
        sim = self.sim
        keys = {i: sim.contacts[i].peer_id.dht_key for i in live}
        started: list[tuple[int, int, int]] = []
        for j in range(self.cfg.lookups):
            src = live[self.rng.randrange(len(live))]
            target = self.rng.getrandbits(256)
            op, acts = self.cores[src].lookup(sim.now, target)
            sim.apply(src, acts)
            started.append((src, op, target))
            sim.run_until(sim.now + 0.01)
            if j % 50 == 0:
                self.progress(phase, j, self.cfg.lookups)
        sim.run_until(sim.now + 30.0)
        hops: list[int] = []
        ok = 0
        for src, op, target in started:
            res = self.lookup_results.pop((src, op), None)
            if res is None:
                continue
            hops.append(res.hops)
            best = min(keys, key=lambda i: keys[i] ^ target)
            if res.ok and res.closest and res.closest[0].peer_id == sim.contacts[best].peer_id:
                ok += 1
        missing = len(started) - len(hops)
        # a lookup that never reported counts as a failure with no hop count
        return hops + [-1] * missing, ok


def _index(addr: str) -> int:
    return int(addr[4:])
