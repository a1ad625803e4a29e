"""RoundCore: the control plane of one DiLoCo outer round, sans-IO.

One round, as this peer sees it:

1. ``start_round``: publish progress ``[samples, model_version, ready, addr]`` under
   the round's DHT key (its shard of it), and poll the progress of the others.
2. Close: when the swarm's announced samples reach ``target_samples`` (checked after
   each poll and on any late reply; a poll does not re-ask a shard whose get is still
   out), at this peer's deadline (after one last poll), or as soon as a peer's
   ``round.join`` or its leader's ``round.close`` shows that the round closed for it.
   A slow peer closes with the samples it has; a dead one never stalls anybody.
3. Group: the participants (announced peers of this peer's shard, with the same model
   version, itself included) are split by ``moshpit_groups``. The smallest PeerId of
   this peer's group leads: it sends ``round.close`` to the others of its group,
   collects ``round.join`` for ``join_window_s`` and then
   sends ``round.group`` to everyone that joined. Views of the participants may differ
   a little between peers; the leader's message is what counts.
4. A member that hears nothing tries the next-smallest member of its group as leader,
   and after ``max_leader_tries`` averages alone (GroupFallback).
5. ``report_failed`` (the data plane could not reach some members): the leader, or the
   smallest remaining member if the leader is among the missing, re-forms the group
   without them (attempt + 1).
6. ``complete_round``: RoundDone; the next ``start_round`` begins afresh.

Every input is checked; messages for another run, round, model version or attempt are
dropped with a logged reason (and counted in ``rejections``).
"""

from __future__ import annotations

import enum
import logging
import math
import random
from collections import Counter
from collections.abc import Iterable

from shoal.dht.records import key_for
from shoal.effects import Action, Emit, Send, SetTimer
from shoal.identity.keys import PeerId
from shoal.rounds.config import RoundConfig
from shoal.rounds.events import (
    DhtGetRequest,
    DhtPutRequest,
    GroupFallback,
    GroupFormed,
    RoundClosed,
    RoundDone,
)
from shoal.rounds.messages import RoundClose, RoundGroup, RoundJoin
from shoal.rounds.moshpit import moshpit_groups, shard_of
from shoal.rounds.progress import Progress
from shoal.wire.codec import DecodeError, Message
from shoal.wire.contact import Contact

log = logging.getLogger(__name__)

POLL_TIMER = "poll"
PUBLISH_TIMER = "publish"
DEADLINE_TIMER = "deadline"
FINAL_TIMER = "final"
JOIN_WINDOW_TIMER = "join_window"
GROUP_TIMER = "group_timeout"
_ALL_TIMERS = (
    POLL_TIMER,
    PUBLISH_TIMER,
    DEADLINE_TIMER,
    FINAL_TIMER,
    JOIN_WINDOW_TIMER,
    GROUP_TIMER,
)

# Joins for the next round that arrive before this peer starts it are kept (it may
# still be averaging the previous round) up to this many, then replayed.
MAX_EARLY_JOINS = 64

# A poll does not ask again for a shard whose get is still out (a get that waits out
# a dead holder's RPC timeout can outlast a poll interval); its answer counts for the
# new poll. A get unanswered for this many poll intervals is taken as lost and asked
# again.
GET_RETRY_AFTER_POLLS = 3


class Phase(enum.Enum):
    IDLE = "idle"  # no round started yet
    TRAINING = "training"  # publishing progress, polling for the close
    CLOSING = "closing"  # deadline passed; waiting for the last poll
    COLLECTING = "collecting"  # leader: collecting joins
    WAITING = "waiting"  # member: joined a leader, waiting for round.group
    FORMED = "formed"  # group known; the data plane is averaging
    DONE = "done"  # complete_round was called


class RoundCore:
    def __init__(self, me: Contact, run: str, config: RoundConfig, rng: random.Random) -> None:
        self.me = me
        self.run = run
        self.config = config
        self._rng = rng
        self._seed = len(run.encode()).to_bytes(4, "big") + run.encode() + config.group_seed
        self.rejections: Counter[str] = Counter()
        self.round_no = -1
        self.model_version = 0
        self.phase = Phase.IDLE
        self._early: list[tuple[Contact, RoundJoin]] = []
        self._reset()

    def _reset(self) -> None:
        self.samples = 0
        self.ready = False
        self.started_at = 0.0
        self.closed_at: float | None = None
        self.shard = 0
        # shard -> publisher raw -> latest progress (same model version only)
        self._seen: dict[int, dict[bytes, Progress]] = {}
        self._read: set[int] = set()
        self._gen = 0
        self._pending: set[int] = set()
        self._pending_kind = ""
        self._asked: dict[int, float] = {}  # shard -> when its outstanding poll get went out
        self._last_est: tuple[float, int] | None = None
        self._rate = 0.0
        self._last_publish: float | None = None
        self._dirty = False
        self._group: list[PeerId] = []
        self._addr: dict[bytes, str] = {}
        self._try = 0
        self._asked_again = False
        self._leader: PeerId | None = None
        self._joined: dict[bytes, tuple[Contact, int]] = {}
        self._deferred: dict[bytes, tuple[Contact, int, int]] = {}
        self.members: tuple[Contact, ...] = ()
        self.member_samples: tuple[int, ...] = ()
        self.attempt = 0
        self._awaiting_reform = False

    # -- introspection ---------------------------------------------------------------

    @property
    def leader(self) -> PeerId | None:
        return self._leader

    def progress_key(self, round_no: int, shard: int) -> bytes:
        if self.config.progress_shards == 1:
            return key_for(f"{self.run}/round/{round_no}")
        return key_for(f"{self.run}/round/{round_no}/shard/{shard}")

    def estimated_samples(self) -> int:
        """The swarm's samples as this peer knows them (extrapolated from the shards
        it read when it reads only some)."""
        shards = self._read | {self.shard}
        total = sum(self._shard_sum(s) for s in shards)
        n = self.config.progress_shards
        if len(shards) >= n:
            return total
        return total * n // len(shards)

    # -- commands --------------------------------------------------------------------

    def start_round(self, now: float, round_no: int, model_version: int) -> list[Action]:
        """Begin ``round_no`` training from ``model_version``. Round numbers only go up."""
        if round_no <= self.round_no:
            raise ValueError(f"round {round_no} is not after the current round {self.round_no}")
        if round_no < 0 or model_version < 0:
            raise ValueError("round and model version are >= 0")
        out: list[Action] = [SetTimer(t, None) for t in _ALL_TIMERS]
        self.round_no = round_no
        self.model_version = model_version
        self._reset()
        self.phase = Phase.TRAINING
        self.started_at = now
        self.shard = shard_of(self.me.peer_id, round_no, self.config.progress_shards, self._seed)
        out.append(SetTimer(DEADLINE_TIMER, now + self.config.deadline_s))
        out += self._publish(now)
        first = self.config.min_poll_interval_s * (1.0 + self._rng.random())
        out.append(SetTimer(POLL_TIMER, now + first))
        early, self._early = self._early, []
        for sender, msg in early:
            out += self.on_message(now, sender, msg)
        return out

    def report_progress(self, now: float, samples: int) -> list[Action]:
        """Samples processed so far in this round (a running total)."""
        if samples < 0:
            raise ValueError("samples must be >= 0")
        if self.phase not in (Phase.TRAINING, Phase.CLOSING):
            return []  # the round closed; later samples go to the next one
        if samples < self.samples:
            raise ValueError(f"samples went down from {self.samples} to {samples}")
        if samples == self.samples:
            return []
        self.samples = samples
        self._dirty = True
        return self._maybe_publish(now)

    def set_ready(self, now: float) -> list[Action]:
        """This peer finished its local steps for the round (published at once)."""
        if self.phase is not Phase.TRAINING or self.ready:
            return []
        self.ready = True
        return self._publish(now)

    def report_failed(
        self, now: float, round_no: int, missing_peers: Iterable[PeerId]
    ) -> list[Action]:
        """The data plane could not reach ``missing_peers``: re-form without them."""
        if round_no != self.round_no or self.phase is not Phase.FORMED:
            log.info("report_failed for round %d ignored: not averaging it", round_no)
            return []
        missing = {p.raw for p in missing_peers} - {self.me.peer_id.raw}
        keep = [i for i, m in enumerate(self.members) if m.peer_id.raw not in missing]
        if len(keep) == len(self.members):
            return []
        members = tuple(self.members[i] for i in keep)
        samples = tuple(self.member_samples[i] for i in keep)
        leader_gone = self._leader is None or self._leader.raw in missing
        new_leader = members[0].peer_id if leader_gone else self._leader
        if new_leader == self.me.peer_id:
            return self._announce_group(now, members, samples, self.attempt + 1)
        self._awaiting_reform = True
        return [SetTimer(GROUP_TIMER, now + self.config.group_timeout_s)]

    def complete_round(self, now: float, round_no: int) -> list[Action]:
        """The data plane finished averaging ``round_no``."""
        if round_no != self.round_no or self.phase is not Phase.FORMED:
            raise ValueError(f"round {round_no} has no formed group to complete")
        self.phase = Phase.DONE
        out: list[Action] = [SetTimer(t, None) for t in _ALL_TIMERS]
        out.append(
            Emit(
                RoundDone(self.round_no, len(self.members), sum(self.member_samples), self.attempt)
            )
        )
        return out

    # -- events ----------------------------------------------------------------------

    def on_timer(self, now: float, name: str) -> list[Action]:
        phase = self.phase
        if name == PUBLISH_TIMER and phase is Phase.TRAINING and self._dirty:
            return self._publish(now)
        if name == POLL_TIMER and phase is Phase.TRAINING:
            return self._poll(now, "poll")
        if name == DEADLINE_TIMER and phase is Phase.TRAINING:
            self.phase = Phase.CLOSING
            out = [SetTimer(POLL_TIMER, None), SetTimer(PUBLISH_TIMER, None)]
            out.append(SetTimer(FINAL_TIMER, now + self.config.final_poll_timeout_s))
            return out + self._poll(now, "final")
        if name == FINAL_TIMER and phase is Phase.CLOSING:
            return self._close(now, "deadline")
        if name == JOIN_WINDOW_TIMER and phase is Phase.COLLECTING:
            joined = sorted(self._joined.values(), key=lambda cs: cs[0].peer_id.raw)
            members = tuple(c for c, _ in joined)
            samples = tuple(s for _, s in joined)
            return self._announce_group(now, members, samples, 0)
        if name == GROUP_TIMER:
            if phase is Phase.WAITING:
                leader = self._leader.short() if self._leader else "-"
                if not self._asked_again:
                    # Our join or its round.group may have been lost: ask once more (a
                    # leader that already formed our group sends it again).
                    log.info("round %d: no group from %s yet; asking again", self.round_no, leader)
                    self._asked_again = True
                    return self._send_join(now, self.config.group_timeout_s)
                log.info("round %d: no group from %s; trying the next", self.round_no, leader)
                return self._try_leader(now, self._try + 1)
            if phase is Phase.FORMED and self._awaiting_reform:
                return self._fallback(now, "the group was not re-formed after a failure")
        return []

    def on_dht_records(
        self, now: float, tag: str, records: list[tuple[PeerId, bytes]]
    ) -> list[Action]:
        """The answer to a DhtGetRequest: verified ``(publisher, value)`` pairs."""
        parsed = _parse_tag(tag)
        if parsed is None:
            log.info("ignoring DHT records with an unknown tag %r", tag[:64])
            self.rejections["bad tag"] += 1
            return []
        kind, round_no, gen, shard = parsed
        if round_no != self.round_no or not 0 <= shard < self.config.progress_shards:
            log.debug("ignoring DHT records for round %d (now %d)", round_no, self.round_no)
            self.rejections["stale dht reply"] += 1
            return []
        self._merge(round_no, shard, records)
        if kind == "poll":
            self._asked.pop(shard, None)
        # Any poll get of a pending shard answers the current poll: a slow one was not
        # asked again (see GET_RETRY_AFTER_POLLS). The final read wants its own gets.
        current = gen == self._gen or kind == "poll"
        if not current or kind != self._pending_kind or shard not in self._pending:
            # Any other late reply (a poll's, landing during the final read) still
            # counts toward the target: checking only the latest read, a swarm whose
            # gets outlast the poll interval would never see its target.
            if self.phase is Phase.TRAINING and (
                self.estimated_samples() >= self.config.target_samples
            ):
                return self._close(now, "target")
            return []
        self._pending.discard(shard)
        if self._pending:
            return []
        if kind == "final" and self.phase is Phase.CLOSING:
            return self._close(now, "deadline")
        if kind == "poll" and self.phase is Phase.TRAINING:
            return self._after_poll(now)
        return []

    def on_message(self, now: float, sender: Contact, msg: Message) -> list[Action]:
        """Handle ``msg`` from ``sender``, whose PeerId the transport authenticated."""
        if isinstance(msg, RoundJoin):
            return self._on_join(now, sender, msg)
        if isinstance(msg, RoundGroup):
            return self._on_group(now, sender, msg)
        if isinstance(msg, RoundClose):
            reason = self._check(sender, msg)
            if reason is not None:
                return self._reject(sender, msg, reason)
            if self.phase in (Phase.TRAINING, Phase.CLOSING):
                # Our polls may not have seen the closer yet; it counted us, so it
                # must be in the set we group, or we would average alone.
                self._note_peer(sender, 0)
                return self._close(now, "peer_closed")
            return []  # already closed: nothing to do
        return self._reject(sender, msg, "not a round message")

    # -- progress --------------------------------------------------------------------

    def _publish(self, now: float) -> list[Action]:
        self._last_publish = now
        self._dirty = False
        value = Progress(self.samples, self.model_version, self.ready, self.me.addr).encode()
        key = self.progress_key(self.round_no, self.shard)
        req = DhtPutRequest(f"progress:{self.round_no}", key, value, self.config.ttl_s)
        return [Emit(req), SetTimer(PUBLISH_TIMER, None)]

    def _maybe_publish(self, now: float) -> list[Action]:
        last = self._last_publish
        if last is None or now - last >= self.config.publish_interval_s:
            return self._publish(now)
        return [SetTimer(PUBLISH_TIMER, last + self.config.publish_interval_s)]

    def _poll(self, now: float, kind: str) -> list[Action]:
        n = self.config.progress_shards
        k = self.config.estimate_shards
        if 1 + k >= n:
            shards = list(range(n))
        else:
            # Every peer of a shard reads the same others, so they agree on the close.
            step = max(1, (n - 1) // (k + 1))
            shards = [self.shard] + [(self.shard + step * (i + 1)) % n for i in range(k)]
        self._gen += 1
        self._pending = set(shards)
        self._pending_kind = kind
        out: list[Action] = []
        if kind == "poll":
            out.append(SetTimer(POLL_TIMER, now + self.config.poll_interval_s))
        retry = GET_RETRY_AFTER_POLLS * self.config.poll_interval_s
        for s in sorted(self._pending):
            if kind == "poll":
                asked = self._asked.get(s)
                if asked is not None and now - asked < retry:
                    continue
                self._asked[s] = now
            tag = f"{kind}:{self.round_no}:{self._gen}:{s}"
            out.append(Emit(DhtGetRequest(tag, self.progress_key(self.round_no, s))))
        return out

    def _merge(self, round_no: int, shard: int, records: list[tuple[PeerId, bytes]]) -> None:
        self._read.add(shard)
        seen = self._seen.setdefault(shard, {})
        n = self.config.progress_shards
        for pid, value in records:
            if pid == self.me.peer_id:
                continue
            try:
                p = Progress.decode(value)
            except DecodeError as exc:
                log.info("bad progress record from %s: %s", pid.short(), exc)
                self.rejections["bad progress"] += 1
                continue
            if p.model_version != self.model_version:
                self.rejections["progress for another model version"] += 1
                continue
            if shard_of(pid, round_no, n, self._seed) != shard:
                self.rejections["progress in the wrong shard"] += 1
                continue
            old = seen.get(pid.raw)
            if old is None or p.samples >= old.samples:
                seen[pid.raw] = p

    def _shard_sum(self, shard: int) -> int:
        cap = self.config.max_peer_samples
        total = sum(
            min(p.samples, cap) if cap else p.samples for p in self._seen.get(shard, {}).values()
        )
        if shard == self.shard:
            total += min(self.samples, cap) if cap else self.samples
        return total

    def _after_poll(self, now: float) -> list[Action]:
        est = self.estimated_samples()
        if est >= self.config.target_samples:
            return self._close(now, "target")
        if self._last_est is not None:
            t0, e0 = self._last_est
            if now > t0 and est > e0:
                self._rate = (est - e0) / (now - t0)
        self._last_est = (now, est)
        eta = (self.config.target_samples - est) / self._rate if self._rate > 0 else math.inf
        delay = min(self.config.poll_interval_s, max(self.config.min_poll_interval_s, eta))
        delay *= 1.0 + 0.1 * self._rng.random()
        return [SetTimer(POLL_TIMER, now + delay)]

    # -- closing and grouping --------------------------------------------------------

    def _note_peer(self, sender: Contact, samples: int) -> None:
        """Count ``sender`` as a participant we learned of first-hand, not by a poll."""
        seen = self._seen.setdefault(self.shard, {})
        if sender.peer_id.raw not in seen:
            seen[sender.peer_id.raw] = Progress(samples, self.model_version, True, sender.addr)

    def _close(self, now: float, reason: str) -> list[Action]:
        est = self.estimated_samples()
        out: list[Action] = [
            SetTimer(t, None) for t in (POLL_TIMER, PUBLISH_TIMER, DEADLINE_TIMER, FINAL_TIMER)
        ]
        self.closed_at = now
        self._pending = set()
        seen = self._seen.get(self.shard, {})
        self._addr = {raw: p.addr for raw, p in seen.items()}
        self._addr[self.me.peer_id.raw] = self.me.addr
        pids = [PeerId(raw) for raw in self._addr]
        groups = moshpit_groups(pids, self.round_no, self.config.group_size, self._seed)
        self._group = next(g for g in groups if self.me.peer_id in g)
        out.append(Emit(RoundClosed(self.round_no, reason, est, len(pids), self.samples)))
        log.debug(
            "round %d closed (%s): %d participants, group of %d",
            self.round_no,
            reason,
            len(pids),
            len(self._group),
        )
        return out + self._try_leader(now, 0)

    def _try_leader(self, now: float, k: int) -> list[Action]:
        self._try = k
        if k >= min(len(self._group), self.config.max_leader_tries):
            return self._fallback(now, f"no leader answered after {k} tries")
        candidate = self._group[k]
        self._leader = candidate
        if candidate == self.me.peer_id:
            self.phase = Phase.COLLECTING
            self._joined = {self.me.peer_id.raw: (self.me, self.samples)}
            for raw, (c, samples, at) in sorted(self._deferred.items()):
                if at == k and len(self._joined) < self.config.group_size:
                    self._joined[raw] = (c, samples)
            self._deferred = {}
            out: list[Action] = [
                SetTimer(GROUP_TIMER, None),
                SetTimer(JOIN_WINDOW_TIMER, now + self.config.join_window_s),
            ]
            if k == 0:
                # Tell the rest of the group the round is over, so members whose
                # next poll is still seconds away join within our window.
                close = RoundClose(self.run, self.round_no, self.model_version)
                for pid in self._group[1:]:
                    out.append(Send(Contact(pid, self._addr[pid.raw]), close))
            return out
        self.phase = Phase.WAITING
        self._asked_again = False
        return self._send_join(now, self.config.join_window_s + self.config.group_timeout_s)

    def _send_join(self, now: float, wait: float) -> list[Action]:
        assert self._leader is not None
        to = Contact(self._leader, self._addr[self._leader.raw])
        join = RoundJoin(self.run, self.round_no, self.model_version, self.samples, self._try)
        return [Send(to, join), SetTimer(GROUP_TIMER, now + wait)]

    def _fallback(self, now: float, reason: str) -> list[Action]:
        log.info("round %d: averaging alone: %s", self.round_no, reason)
        out: list[Action] = [Emit(GroupFallback(self.round_no, reason))]
        attempt = self.attempt + 1 if self.phase is Phase.FORMED else 0
        return out + self._set_group((self.me,), (self.samples,), attempt, self.me.peer_id)

    def _announce_group(
        self,
        now: float,
        members: tuple[Contact, ...],
        samples: tuple[int, ...],
        attempt: int,
    ) -> list[Action]:
        msg = RoundGroup(
            self.run, self.round_no, self.model_version, members, samples, sum(samples), attempt
        )
        out: list[Action] = [Send(m, msg) for m in members if m.peer_id != self.me.peer_id]
        return out + self._set_group(members, samples, attempt, self.me.peer_id)

    def _set_group(
        self,
        members: tuple[Contact, ...],
        samples: tuple[int, ...],
        attempt: int,
        leader: PeerId,
    ) -> list[Action]:
        self.phase = Phase.FORMED
        self.members = members
        self.member_samples = samples
        self.attempt = attempt
        self._leader = leader
        self._awaiting_reform = False
        ev = GroupFormed(self.round_no, members, samples, sum(samples), attempt, leader)
        return [SetTimer(GROUP_TIMER, None), SetTimer(JOIN_WINDOW_TIMER, None), Emit(ev)]

    # -- messages --------------------------------------------------------------------

    def _check(self, sender: Contact, msg: RoundJoin | RoundGroup | RoundClose) -> str | None:
        """Why ``msg`` is not for the round in progress, or None if it is."""
        if msg.run != self.run:
            return "wrong run"
        if msg.round_no < self.round_no:
            return "stale round"
        if msg.round_no > self.round_no:
            return "future round"
        if msg.model_version != self.model_version:
            return "wrong model version"
        if self.phase is Phase.IDLE:
            return "no round in progress"
        if self.phase is Phase.DONE:
            return "round already done"
        return None

    def _reject(self, sender: Contact, msg: Message, reason: str) -> list[Action]:
        log.info("dropping %s from %s: %s", msg.TYPE, sender.peer_id.short(), reason)
        self.rejections[reason] += 1
        return []

    def _on_join(self, now: float, sender: Contact, msg: RoundJoin) -> list[Action]:
        if (
            msg.run == self.run
            and msg.round_no == self.round_no + 1
            and self.phase in (Phase.FORMED, Phase.DONE)
            and len(self._early) < MAX_EARLY_JOINS
        ):
            self._early.append((sender, msg))  # replayed by the next start_round
            return []
        reason = self._check(sender, msg)
        if reason is not None:
            return self._reject(sender, msg, reason)
        if sender.peer_id == self.me.peer_id:
            return self._reject(sender, msg, "join from ourselves")
        out: list[Action] = []
        if self.phase in (Phase.TRAINING, Phase.CLOSING):
            self._note_peer(sender, msg.samples)
            out += self._close(now, "peer_closed")
        if self.phase is Phase.WAITING:
            k = msg.attempt
            if k < len(self._group) and self._group[k] == self.me.peer_id and k > self._try:
                # The joiner gave up on the leaders before us; we have not (yet). Keep
                # the join: if we give up on them too we lead, with this joiner. If
                # our leader answers, the joiner is turned away and tries the next.
                self._deferred[sender.peer_id.raw] = (sender, msg.samples, k)
                return out
        if self.phase is Phase.COLLECTING:
            raw = sender.peer_id.raw
            if raw not in self._joined and len(self._joined) >= self.config.group_size:
                return out + self._reject(sender, msg, "group full")
            self._joined[raw] = (sender, msg.samples)
            return out
        if self.phase is Phase.FORMED and self._leader == self.me.peer_id:
            group = RoundGroup(
                self.run,
                self.round_no,
                self.model_version,
                self.members,
                self.member_samples,
                sum(self.member_samples),
                self.attempt,
            )
            if any(m.peer_id == sender.peer_id for m in self.members):
                # A member that lost our round.group asks again: send it again.
                return [*out, Send(sender, group)]
            # Tell a late joiner its group formed without it (the members, not it):
            # silence cost it two leader tries, ~20 s on the testbed, before it fell
            # back to averaging alone and catching up, which it can now do at once.
            return [*out, *self._reject(sender, msg, "group already formed"), Send(sender, group)]
        return out + self._reject(sender, msg, "not the leader")

    def _on_group(self, now: float, sender: Contact, msg: RoundGroup) -> list[Action]:
        reason = self._check(sender, msg)
        if reason is not None:
            return self._reject(sender, msg, reason)
        ids = {m.peer_id for m in msg.members}
        if self.me.peer_id not in ids:
            if self.phase is Phase.WAITING and sender.peer_id == self._leader:
                # Our leader formed its group before our join came: no other leader
                # of ours will take us either (they are its members), so average
                # alone now; the head vote then brings us the group's result.
                self.rejections["group formed without us"] += 1
                return self._fallback(now, "our leader's group formed without us")
            return self._reject(sender, msg, "not a member")
        if sender.peer_id not in ids:
            return self._reject(sender, msg, "sender not in the group")
        if len(msg.members) > self.config.group_size:
            return self._reject(sender, msg, "group larger than group_size")
        if self.phase is Phase.WAITING:
            if sender.peer_id != self._leader:
                return self._reject(sender, msg, "not our leader")
            return self._set_group(msg.members, msg.member_samples, msg.attempt, sender.peer_id)
        if self.phase is not Phase.FORMED:
            return self._reject(sender, msg, "not waiting for a group")
        if msg.attempt <= self.attempt:
            if msg.attempt == self.attempt and msg.members == self.members:
                self.rejections["duplicate"] += 1
                return []
            return self._reject(sender, msg, "stale attempt")
        current = {m.peer_id for m in self.members}
        if not ids <= current:
            return self._reject(sender, msg, "re-formed group adds members")
        leader = self._leader
        authorised = sender.peer_id == leader or (
            leader not in ids and sender.peer_id == msg.members[0].peer_id
        )
        if not authorised:
            return self._reject(sender, msg, "not our leader")
        return self._set_group(msg.members, msg.member_samples, msg.attempt, sender.peer_id)


def _parse_tag(tag: str) -> tuple[str, int, int, int] | None:
    parts = tag.split(":")
    if len(parts) != 4 or parts[0] not in ("poll", "final"):
        return None
    try:
        return parts[0], int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:
        return None
