"""The ledger's hook into DiLoCo rounds (``DiLoCo(..., ledger=hook)``).

Per round, on the training thread:
  - ``commit_update`` before the all-reduce: the update's hash and samples go into
    this peer's feed (fsynced) and our heads are gossiped to the swarm;
  - ``anchor_round`` after it: pull the group members' commitments by replication,
    check each (signature, run, round, admission), record the round aggregate with
    the new model hash, and, if we are the group's anchorer (the lowest peer id that
    contributed), queue the round's one anchor transaction on a worker thread, so
    training goes on while the chain confirms it (``stats()`` waits for the queue).
After the last round, ``settle`` keeps gossiping heads until every live ledger peer
has finished the run and advertises exactly our heads (bounded), so the swarm's
final entries (each group's last aggregates) reach every peer, not just the group.
A node whose data dir holds ``ledger/chain.json`` uses the ledger (``hook_for``);
``join`` refuses to train when the chain has not admitted this peer.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from shoal.identity.keys import PeerId
from shoal.ledger.backends import CHAIN_RECORD, ChainRecord, load_chain_key, rpc_web3
from shoal.ledger.chain import ChainLedger, LedgerError
from shoal.ledger.entry import Entry, EntryError, Kind
from shoal.ledger.equivocation import EquivocationProof
from shoal.ledger.feed import FeedStore
from shoal.ledger.gossip import FeedGossip, Heard
from shoal.ledger.payloads import Contribution, RoundAggregate, payload_of
from shoal.ledger.run_ledger import ADMISSION_CACHE_S, CommitmentRejected, RunLedger
from shoal.runtime.background import NodeThread
from shoal.wire.contact import Contact

log = logging.getLogger(__name__)

FEED_PATH = Path("ledger") / "feed.sqlite"
CHAIN_KEY_PATH = Path("ledger") / "chain.key"
# How long to wait for the group's commitments to replicate before anchoring
# without the missing ones (they are then left out of the anchor and the credits).
COMMIT_WAIT_S = 15.0
# Commitments usually arrive during the all-reduce; poll briefly, re-gossip slowly.
POLL_S = 0.02
ANNOUNCE_EVERY_S = 0.5
# A peer the chain admitted less than this long ago is admitted at once while its
# admission is re-read in the background (only a peer checked more than
# ADMISSION_CACHE_S ago is re-read): the averager asks about every group member each
# round, and a JSON-RPC read per member (~0.2 s each on the wan testbed) would hold up
# the round. A ban still takes effect within ADMISSION_CACHE_S plus one re-read.
ADMISSION_STALE_S = 600.0
# End of run: how long to wait for the live peers to hold the same feed heads as we do
# (a peer still in its last round, or one that never answers, must not hold us forever).
SETTLE_TIMEOUT_S = 60.0
SETTLE_POLL_S = 0.1
# Peers that are settling announce every ANNOUNCE_EVERY_S; give them two announcements
# to be heard before an empty or partial "heard" set can pass as agreement.
SETTLE_MIN_S = 2 * ANNOUNCE_EVERY_S
# A peer that ended the run by downloading the swarm's state has no aggregate for the
# last round; it counts as finished once it has re-announced our heads, unchanged, for
# this long (a peer still training announces once a round, not every 0.5 s).
SETTLE_QUIET_S = 3.0
SETTLE_FRESH_S = 3 * ANNOUNCE_EVERY_S
# We leave only after the swarm has agreed for this long, announcing all the while, so
# peers that judge us by SETTLE_QUIET_S see a whole quiet streak before we go.
SETTLE_HOLD_S = SETTLE_QUIET_S + SETTLE_FRESH_S


class LedgerHook:
    def __init__(self, ledger: RunLedger, node_thread: NodeThread) -> None:
        self.ledger = ledger
        self.thread = node_thread
        assert node_thread.node is not None
        self.node = node_thread.node
        self.gossip: FeedGossip = node_thread.call(self._attach())
        # Time the training thread spent blocked in ledger work, by phase (the overhead
        # benchmark reads these), and time the background anchor worker spent.
        self.timings = {"commit_s": 0.0, "collect_s": 0.0, "record_s": 0.0, "anchor_bg_s": 0.0}
        self.anchored: list[int] = []
        self._proofs: list[EquivocationProof] = []
        self._lock = threading.Lock()
        # Anchor transactions wait on the chain, not on training: one worker sends them
        # in round order while the next round trains.
        self._anchorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-anchor")
        self._pending: list[Future[None]] = []
        self.settled: dict[str, Any] | None = None
        # Admission re-reads, off the round's path; at most one queued per peer.
        self._rechecker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-admit")
        self._rechecking: set[PeerId] = set()

    @property
    def seconds(self) -> float:
        t = self.timings
        return t["commit_s"] + t["collect_s"] + t["record_s"]

    async def _attach(self) -> FeedGossip:
        return FeedGossip(self.node, self.ledger.store, self._on_equivocation)

    def _on_equivocation(self, proof: EquivocationProof) -> None:
        with self._lock:
            self._proofs.append(proof)

    def join(self) -> None:
        self.ledger.join()

    def admits(self, peer: PeerId) -> bool:
        """Is ``peer`` admitted on-chain (cached)? The averager refuses it otherwise."""
        lg = self.ledger
        if not lg.admitted_within(peer, ADMISSION_CACHE_S) and lg.admitted_within(
            peer, ADMISSION_STALE_S
        ):
            self._recheck(peer)  # known good: answer now, re-read off the round's path
            return True
        return self._check(peer)

    def _check(self, peer: PeerId) -> bool:
        try:
            return self.ledger.is_admitted(peer)
        except LedgerError as exc:  # chain unreachable: do not drop honest peers for it
            log.warning("admission check for %s failed: %s", peer.short(), exc)
            return True

    def _recheck(self, peer: PeerId) -> None:
        with self._lock:
            if peer in self._rechecking:
                return
            self._rechecking.add(peer)

        def run() -> None:
            try:
                if not self._check(peer):
                    log.warning("%s is no longer admitted on-chain", peer.short())
            finally:
                with self._lock:
                    self._rechecking.discard(peer)

        try:
            self._rechecker.submit(run)
        except RuntimeError:  # closed: the run is over, nothing to re-read for
            with self._lock:
                self._rechecking.discard(peer)

    def _peers(self) -> list[Contact]:
        return [
            Contact(PeerId.parse(p["peer_id"]), p["addr"])
            for p in self.node.peers()
            if p["state"] == "alive"
        ]

    def _announce(self, peers: Sequence[Contact]) -> None:
        self.thread.call_soon(self.gossip.announce, list(peers))

    def commit_update(self, round_no: int, delta: bytes, samples: int) -> None:
        t0 = time.perf_counter()
        self.ledger.commit_update(round_no, hashlib.sha256(delta).digest(), samples)
        self._announce(self._peers())
        self.timings["commit_s"] += time.perf_counter() - t0

    def anchor_round(
        self, round_no: int, model_hash: str, members: Sequence[Contact]
    ) -> str | None:
        """Record the round; the group's anchorer queues its anchor transaction."""
        t0 = time.perf_counter()
        found = self._collect(round_no, members)
        t1 = time.perf_counter()
        self.timings["collect_s"] += t1 - t0
        if not found:
            return None
        lg = self.ledger
        entry = lg.record_round(round_no, bytes.fromhex(model_hash), list(found.values()))
        self._announce(members)
        if min(found, key=lambda p: p.raw) == lg.peer_id:
            self._pending = [f for f in self._pending if not f.done()]
            self._pending.append(self._anchorer.submit(self._anchor, round_no, entry))
        self.timings["record_s"] += time.perf_counter() - t1
        return entry.hash.hex()

    def _collect(self, round_no: int, members: Sequence[Contact]) -> dict[PeerId, Contribution]:
        """The group's commitments for this round, pulled by replication and checked."""
        lg = self.ledger
        want = {m.peer_id for m in members}
        found: dict[PeerId, Contribution] = {}
        deadline = time.monotonic() + COMMIT_WAIT_S
        next_announce = time.monotonic() + ANNOUNCE_EVERY_S
        while True:
            for pid in want - found.keys():
                e = lg.commitment_of(pid, round_no)
                if e is None:
                    continue
                try:
                    found[pid] = lg.accept_commitment(e, round_no)
                except CommitmentRejected as exc:
                    log.warning("round %d: %s", round_no, exc)
                    want.discard(pid)
            if found.keys() >= want or time.monotonic() > deadline:
                break
            if time.monotonic() >= next_announce:
                self._announce(members)
                next_announce = time.monotonic() + ANNOUNCE_EVERY_S
            time.sleep(POLL_S)
        missing = want - found.keys()
        if missing:
            log.warning("round %d: no commitment from %s", round_no,
                        ", ".join(p.short() for p in missing))  # fmt: skip
        return found

    def _anchor(self, round_no: int, entry: Entry) -> None:
        t0 = time.perf_counter()
        try:
            self.ledger.anchor(entry)
            with self._lock:
                self.anchored.append(round_no)
            log.info("round %d anchored on-chain", round_no)
        except LedgerError as exc:
            log.error("round %d: anchoring failed: %s", round_no, exc)
        finally:
            self._submit_proofs()
            self.timings["anchor_bg_s"] += time.perf_counter() - t0

    def _submit_proofs(self) -> None:
        with self._lock:
            proofs, self._proofs = self._proofs, []
        for p in proofs:
            try:
                if self.ledger.chain is not None:
                    self.ledger.chain.submit_equivocation(p)
                    log.warning("submitted equivocation proof against %s", p.a.author.short())
            except LedgerError as exc:
                log.warning("equivocation proof not accepted: %s", exc)

    def settle(self, final_round: int, timeout_s: float = SETTLE_TIMEOUT_S) -> bool:
        """Gossip heads until every live peer that takes part in the ledger has ended the
        run (``_finished``) and advertises exactly our heads, for SETTLE_HOLD_S; or until
        ``timeout_s``. True when the swarm agreed. Call after the last round."""
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        next_announce = t0
        waiting: list[PeerId] = []
        agreed_at: float | None = None
        done: set[PeerId] = set()  # ended the run: that does not change once seen
        while True:
            heard: dict[PeerId, Heard] = self.thread.call(self._heard())
            alive = self._peers()
            live = [c for c in alive if c.peer_id in heard]  # those that gossip feeds
            mine = frozenset(self.gossip.core.advertise().heads)
            now = time.monotonic()
            done.update(
                c.peer_id
                for c in live
                if c.peer_id not in done
                and self._finished(c.peer_id, final_round, heard[c.peer_id], now)
            )
            waiting = [c.peer_id for c in live
                       if heard[c.peer_id].heads != mine or c.peer_id not in done]  # fmt: skip
            agreed_at = None if waiting else (now if agreed_at is None else agreed_at)
            if agreed_at is not None and not live and now - t0 >= SETTLE_MIN_S:
                break  # nobody left to agree with (we are the last)
            if agreed_at is not None and now - agreed_at >= SETTLE_HOLD_S:
                break
            if now > deadline:
                break
            if now >= next_announce:
                self._announce(alive)
                next_announce = now + ANNOUNCE_EVERY_S
            time.sleep(SETTLE_POLL_S)
        self.settled = {
            "converged": not waiting,
            "settle_s": round(time.monotonic() - t0, 3),
            "peers": len(live),
            "waited_for": sorted(p.short() for p in waiting),
        }
        if waiting:
            log.warning("feeds not settled after %.0f s; still waiting for %s", timeout_s,
                        ", ".join(p.short() for p in waiting))  # fmt: skip
        return not waiting

    async def _heard(self) -> dict[PeerId, Heard]:
        return dict(self.gossip.heard)  # a copy, taken on the loop that writes it

    def _finished(self, peer: PeerId, final_round: int, heard: Heard, now: float) -> bool:
        """Has ``peer`` ended the run? Its newest entry (as we hold it) closes a round:
        the last one, or an earlier one when the peer then caught up by download and
        has been settling (re-announcing the same heads) for SETTLE_QUIET_S."""
        store = self.ledger.store
        head = store.head(peer)
        entry = None if head is None else store.get(peer, head.seq)
        if entry is None or entry.kind != Kind.ROUND_AGGREGATE:
            return False
        try:
            agg = payload_of(entry)
        except EntryError:  # a malformed payload from its author: never "finished"
            return False
        if not isinstance(agg, RoundAggregate):
            return False
        settling = now - heard.seen <= SETTLE_FRESH_S and now - heard.since >= SETTLE_QUIET_S
        return agg.round >= final_round or settling

    def feed_heads(self) -> list[tuple[str, int, str]]:
        """(author, seq, entry hash) of the newest entry held of each feed."""
        return [(str(h.author), h.seq, h.hash.hex()) for h in self.ledger.store.heads()]

    def flush(self) -> None:
        """Wait for queued anchor transactions (and proofs) to be sent."""
        for f in list(self._pending):
            f.result()
        self._anchorer.submit(self._submit_proofs).result()

    def close(self) -> None:
        self.flush()
        self._anchorer.shutdown(wait=True)
        self._rechecker.shutdown(wait=True)
        self.ledger.store.close()

    def stats(self) -> dict[str, Any]:
        self.flush()  # the result names every anchored round
        with self._lock:
            anchored = sorted(self.anchored)
        return {
            "ledger_s": round(self.seconds, 4),
            **{k: round(v, 4) for k, v in self.timings.items()},
            "anchored_rounds": anchored,
            "settle": self.settled,
            "feed_heads": self.feed_heads(),
        }


def hook_for(data_dir: Path, run: str, node_thread: NodeThread) -> LedgerHook | None:
    """The ledger hook for a node whose data dir was set up for one, else None."""
    if not (data_dir / CHAIN_RECORD).exists():
        return None
    record = ChainRecord.load(data_dir)
    if not record.rpc_url:
        raise LedgerError(f"{data_dir / CHAIN_RECORD} names no rpc_url for this node")
    key_file = data_dir / CHAIN_KEY_PATH
    account = load_chain_key(key_file if key_file.exists() else None)
    chain = ChainLedger(rpc_web3(record.rpc_url), account, record.contract,
                        bytes.fromhex(record.run_id))  # fmt: skip
    assert node_thread.node is not None
    store = FeedStore(data_dir / FEED_PATH)
    hook = LedgerHook(RunLedger(node_thread.node.identity, store, chain, run), node_thread)
    hook.join()
    log.info("ledger on: feed %s, run %s on %s", data_dir / FEED_PATH, record.run_id[:12],
             record.rpc_url)  # fmt: skip
    return hook
