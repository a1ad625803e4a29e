"""SWIM membership and failure detection, as a sans-IO state machine.

Protocol (Das, Gupta, Motivala 2002, with memberlist/Lifeguard's refinements):

* Every protocol period the core probes one member of its view. Targets come
  round-robin from a list shuffled at the start of each pass, so every member is
  probed once per pass (a member that joins mid-pass goes to a random place among
  the members not yet probed in it). The probe is a direct ``swim.ping``; if no
  ``swim.ack`` arrives within ``ping_timeout_s`` (or the runtime reports the target
  unreachable), ``indirect_probes`` other alive members get a ``swim.ping_req`` and
  relay the target's ack. No ack by the next period: the target becomes *suspect*.
* The prober also sends the suspect a ``swim.gossip`` saying so, so that a member
  that is alive but was briefly cut off refutes at once, not when the rumour reaches it.
* A suspect that does not refute within the suspicion timeout,
  ``suspicion_mult * max(1, log10(n)) * period`` for a view of ``n`` once
  ``suspicion_confirmations`` independent accusers confirmed it, up to
  ``suspicion_max_mult`` times that for a lone accuser (Lifeguard), becomes *dead*:
  it leaves the view (no more probes) and is kept as a tombstone with its
  incarnation for ``tombstone_ttl_s`` (at most ``max_tombstones`` of them).
* Every accepted change is gossiped: piggybacked on pings, acks and ping-reqs, each
  entry ``retransmit_mult * ceil(log2(n + 1))`` times (see gossip.py). Precedence
  between statements is in state.py.
* Each message carries its sender's incarnation, which the receiver applies as a
  first-hand ``alive`` statement.

Refutation and rejoin. A node that hears it is suspect or dead at an incarnation at
least its own raises its incarnation above that and gossips itself alive; ``alive`` at
a higher incarnation overrides the rumour everywhere. When a peer we hold suspect or
dead talks to us (any SWIM message) at an incarnation not above the one we hold, we
tell it: a ping's ack carries that statement first, any other message gets a
``swim.gossip`` reply. This is how a node that restarts with the same key, and so
starts again at incarnation 0, is taken back: its first ping to any peer that buried
it returns ``dead(i)``, it moves to ``i + 1``, and its next messages carry the
``alive(i + 1)`` that overrides the tombstones.

Bounded view, and its trade-off. Full membership in a 10,000-node swarm would cost
10^8 entries across the swarm and 10,000 entries of probe and gossip state per node.
So the view holds at most ``max_members`` (default 512) members. Members enter it
through ``add_member`` (the runtime feeds the contacts its DHT discovers), and through
first-hand messages and ``alive`` gossip from unknown peers while there is room; the
view never evicts a live member to make room. Statements about peers neither in the
view nor tombstoned are not kept or relayed, so a hostile peer cannot make us store or
amplify unbounded rumours. Up to ``max_members`` peers this is exactly SWIM with full
membership. Beyond it, each node watches only its view: a crash is detected by the
nodes that held the crashed peer (each probes it at least once per pass of its view,
and they gossip the suspicion among themselves); a peer that nobody holds is not
watched by SWIM at all, and probe load follows how many views hold a peer rather than
being uniform. The DHT's own liveness checks cover what SWIM does not.

Timing bounds (period ``T``, view size ``V``, shortest suspicion timeout ``S``, longest
``S_max = suspicion_max_mult * S``): a holder probes a crashed member within ``2V``
periods of the crash (the member may come first in one pass and last in the next),
suspects it one period later and buries it at most ``S_max`` after that, so every
holder marks it dead within ``(2V + 1) T + S_max`` even with no help from gossip. With
full membership the first of the ``n - 1`` holders detects it after about
``e / (e - 1) ~= 1.6`` periods on average, independent accusers bring the timeout down
to ``S`` within a few periods, and gossip spreads the suspicion in ``O(log n)``
periods, so detection is usually far faster than that bound (the 100-node test buries
10 crashed nodes everywhere in about 15 s against a bound of ~250 s). A live member
cut off for less than about ``S`` minus the dissemination time refutes in time.

Caveat: statements are not signed, so a hostile member can spread ``dead`` about
others; SWIM assumes members are not Byzantine.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict

from shoal.effects import Action, Emit, Send, SetTimer
from shoal.identity.keys import PeerId
from shoal.membership.config import MAX_PENDING_RELAYS, SwimConfig
from shoal.membership.events import MemberAlive, MemberDead, MemberJoined, MemberSuspect
from shoal.membership.gossip import GossipBuffer
from shoal.membership.messages import MAX_SEQ, Ack, Gossip, Ping, PingReq
from shoal.membership.state import MAX_INCARNATION, Member, MemberState, supersedes
from shoal.wire.codec import Message
from shoal.wire.contact import Contact

__all__ = ["SwimConfig", "SwimCore"]

PERIOD_TIMER = "period"
_PING_TIMEOUT = "ping_timeout:"
_RELAY = "relay:"
_SUSPECT = "suspect:"

# A suspicion timer that fires this much early (a runtime's clock granularity) still
# counts; one that fires earlier than that is re-armed.
_TIMER_SLACK_S = 1e-3

_ALIVE = MemberState.ALIVE
_SUSPECT_STATE = MemberState.SUSPECT
_DEAD = MemberState.DEAD


class _Record:
    """A member of the view: alive or suspect."""

    __slots__ = ("accusers", "contact", "incarnation", "state", "suspect_deadline", "suspect_start")

    def __init__(self, contact: Contact, state: MemberState, incarnation: int) -> None:
        self.contact = contact
        self.state = state
        self.incarnation = incarnation
        self.suspect_start = 0.0
        self.suspect_deadline = 0.0
        # Distinct nodes that reported this suspicion, first one first; at most
        # suspicion_confirmations + 1 of them.
        self.accusers: list[PeerId] = []

    def snapshot(self) -> Member:
        return Member(self.contact, self.state, self.incarnation)


class _Tombstone:
    __slots__ = ("contact", "expires", "incarnation")

    def __init__(self, contact: Contact, incarnation: int, expires: float) -> None:
        self.contact = contact
        self.incarnation = incarnation
        self.expires = expires


class _Probe:
    """This period's probe."""

    __slots__ = ("acked", "helpers", "indirect_sent", "seq", "target")

    def __init__(self, seq: int, target: Contact) -> None:
        self.seq = seq
        self.target = target
        self.acked = False
        self.indirect_sent = False
        self.helpers: tuple[PeerId, ...] = ()


class _Relay:
    """A ping we sent on behalf of another node's ping-req."""

    __slots__ = ("requester", "requester_seq", "target")

    def __init__(self, requester: Contact, requester_seq: int, target: PeerId) -> None:
        self.requester = requester
        self.requester_seq = requester_seq
        self.target = target


class SwimCore:
    """SWIM failure detector and membership view of one node.

    Every entry point takes the current time and returns the actions for the runtime.
    """

    __slots__ = (
        "_cfg",
        "_gossip",
        "_ids",
        "_incarnation",
        "_me",
        "_pos",
        "_probe",
        "_probe_next",
        "_probe_order",
        "_relays",
        "_rng",
        "_seq",
        "_tombstones",
        "_view",
    )

    def __init__(self, me: Contact, config: SwimConfig, rng: random.Random) -> None:
        self._me = me
        self._cfg = config
        self._rng = rng
        self._incarnation = 0
        self._view: dict[PeerId, _Record] = {}
        # The view's ids again, as an array, for O(1) random picks and removal.
        self._ids: list[PeerId] = []
        self._pos: dict[PeerId, int] = {}
        self._probe_order: list[PeerId] = []
        self._probe_next = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._tombstones: OrderedDict[PeerId, _Tombstone] = OrderedDict()
        # One entry per peer we hold (view, tombstones) plus ourselves.
        self._gossip = GossipBuffer(config.max_members + config.max_tombstones + 1)
        # A random start keeps a restarted node's seqs apart from its old life's.
        self._seq = rng.getrandbits(32)

    # ------------------------------------------------------------------ queries

    @property
    def me(self) -> Contact:
        return self._me

    @property
    def config(self) -> SwimConfig:
        return self._cfg

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def view_size(self) -> int:
        """Members being probed (alive and suspect); excludes tombstones."""
        return len(self._view)

    @property
    def tombstone_count(self) -> int:
        return len(self._tombstones)

    @property
    def gossip_backlog(self) -> int:
        """Updates still queued for retransmission."""
        return len(self._gossip)

    def members(self) -> list[Member]:
        """The view (alive and suspect) followed by dead tombstones."""
        out = [rec.snapshot() for rec in self._view.values()]
        out.extend(Member(t.contact, _DEAD, t.incarnation) for t in self._tombstones.values())
        return out

    def alive_members(self) -> list[Member]:
        return [rec.snapshot() for rec in self._view.values() if rec.state is _ALIVE]

    def member(self, peer_id: PeerId) -> Member | None:
        """What we believe about ``peer_id``, or None if it is neither viewed nor buried."""
        rec = self._view.get(peer_id)
        if rec is not None:
            return rec.snapshot()
        tomb = self._tombstones.get(peer_id)
        if tomb is not None:
            return Member(tomb.contact, _DEAD, tomb.incarnation)
        return None

    def suspicion_timeout(self, confirmations: int = 0) -> float:
        """Seconds from first suspicion to death, after ``confirmations`` independent
        accusers beyond the first (Lifeguard; memberlist's suspicion.go formula)."""
        cfg = self._cfg
        n = len(self._view) + 1
        shortest = cfg.suspicion_mult * max(1.0, math.log10(n)) * cfg.protocol_period_s
        k = min(cfg.suspicion_confirmations, n - 2)
        if k <= 0:
            return shortest
        longest = cfg.suspicion_max_mult * shortest
        frac = math.log(min(confirmations, k) + 1) / math.log(k + 1)
        return max(shortest, longest - (longest - shortest) * frac)

    def retransmit_limit(self) -> int:
        n = len(self._view) + 1
        return self._cfg.retransmit_mult * math.ceil(math.log2(n + 1))

    # ------------------------------------------------------------------ commands

    def start(self, now: float) -> list[Action]:
        """Arm the period timer. The first tick is at a random point of the first
        period, so nodes started together do not probe in lock step."""
        return [SetTimer(PERIOD_TIMER, now + self._rng.random() * self._cfg.protocol_period_s)]

    def add_member(self, now: float, contact: Contact) -> list[Action]:
        """Add a contact discovered elsewhere (bootstrap list, DHT) to the view.

        Ignored if it is us, already viewed, buried (until its tombstone expires; a
        live peer we buried rejoins by refuting), or if the view is full. It is not
        gossiped: nothing shows it is alive until it answers a probe.
        """
        pid = contact.peer_id
        if pid == self._me.peer_id or pid in self._view or pid in self._tombstones:
            return []
        if len(self._view) >= self._cfg.max_members:
            return []
        actions: list[Action] = []
        self._admit(contact, 0, actions, joined=True)
        return actions

    # ------------------------------------------------------------------ events

    def on_message(self, now: float, sender: Contact, msg: Message) -> list[Action]:
        """Handle a SWIM message that ``sender`` (authenticated by the transport, with
        its listening address) sent us. Non-SWIM messages are ignored."""
        if not isinstance(msg, Ping | Ack | PingReq | Gossip):
            return []
        if sender.peer_id == self._me.peer_id:
            return []
        actions: list[Action] = []
        spid = sender.peer_id
        self._apply(now, Member(sender, _ALIVE, msg.incarnation), spid, actions)
        for update in msg.updates:
            self._apply(now, update, spid, actions)
        if isinstance(msg, Ping):
            actions.append(Send(sender, Ack(msg.seq, self._incarnation, self._piggyback(sender))))
            return actions
        if isinstance(msg, Ack):
            self._on_ack(now, sender, msg, actions)
        elif isinstance(msg, PingReq):
            self._on_ping_req(now, sender, msg, actions)
        rumour = self._rumour_about(sender.peer_id)
        if rumour is not None:
            updates = (rumour, *self._take_gossip(self._cfg.max_piggyback - 1, rumour))
            actions.append(Send(sender, Gossip(self._incarnation, updates)))
        return actions

    def on_timer(self, now: float, name: str) -> list[Action]:
        if name == PERIOD_TIMER:
            return self._on_period(now)
        if name.startswith(_PING_TIMEOUT):
            seq = _parse_int(name[len(_PING_TIMEOUT) :])
            probe = self._probe
            if probe is not None and probe.seq == seq:
                return self._probe_indirectly(now, probe)
            return []
        if name.startswith(_RELAY):
            seq = _parse_int(name[len(_RELAY) :])
            if seq is not None:
                self._relays.pop(seq, None)
            return []
        if name.startswith(_SUSPECT):
            return self._on_suspicion_timeout(now, name, name[len(_SUSPECT) :])
        return []

    def on_unreachable(self, now: float, contact: Contact) -> list[Action]:
        """The runtime could not reach ``contact``. If it is this period's probe
        target, go to indirect probes now instead of waiting for the ping timeout."""
        probe = self._probe
        if (
            probe is None
            or probe.target.peer_id != contact.peer_id
            or probe.acked
            or probe.indirect_sent
        ):
            return []
        actions = self._probe_indirectly(now, probe)
        actions.append(SetTimer(_PING_TIMEOUT + str(probe.seq), None))
        return actions

    # ------------------------------------------------------------------ probing

    def _on_period(self, now: float) -> list[Action]:
        actions: list[Action] = []
        probe = self._probe
        self._probe = None
        if probe is not None and not probe.acked:
            actions.append(SetTimer(_PING_TIMEOUT + str(probe.seq), None))
            rec = self._view.get(probe.target.peer_id)
            if rec is not None:
                # A member already suspect gains us as an accuser.
                self._suspect(now, rec, rec.incarnation, self._me.peer_id, actions)
                # Tell the suspect itself: if it is alive but was cut off from us (a
                # healed partition, an overloaded moment) it refutes at once instead of
                # waiting for the rumour to reach it by gossip. If it is dead, one
                # message is lost.
                gossip = Gossip(self._incarnation, self._piggyback(rec.contact))
                actions.append(Send(rec.contact, gossip))
        self._expire_tombstones(now)
        target = self._next_target()
        if target is not None:
            seq = self._next_seq()
            self._probe = _Probe(seq, target.contact)
            ping = Ping(seq, self._incarnation, self._piggyback(target.contact))
            actions.append(Send(target.contact, ping))
            actions.append(SetTimer(_PING_TIMEOUT + str(seq), now + self._cfg.ping_timeout_s))
        actions.append(SetTimer(PERIOD_TIMER, now + self._cfg.protocol_period_s))
        return actions

    def _next_target(self) -> _Record | None:
        while True:
            if self._probe_next >= len(self._probe_order):
                if not self._view:
                    return None
                self._probe_order = list(self._view)
                self._rng.shuffle(self._probe_order)
                self._probe_next = 0
            pid = self._probe_order[self._probe_next]
            self._probe_next += 1
            rec = self._view.get(pid)
            if rec is not None:
                return rec

    def _schedule_probe(self, pid: PeerId) -> None:
        """Put a new member among those still to probe in this pass."""
        order = self._probe_order
        rest = len(order) - self._probe_next
        if rest > 2 * len(self._view) + 16:
            # Churn left many removed ids in the pass; drop them (amortised O(1)).
            order = [p for p in order[self._probe_next :] if p in self._view]
            self._probe_order = order
            self._probe_next = 0
        order.insert(self._rng.randint(self._probe_next, len(order)), pid)

    def _probe_indirectly(self, now: float, probe: _Probe) -> list[Action]:
        if probe.acked or probe.indirect_sent:
            return []
        probe.indirect_sent = True
        helpers = self._pick_helpers(probe.target.peer_id, self._cfg.indirect_probes)
        probe.helpers = tuple(h.contact.peer_id for h in helpers)
        actions: list[Action] = []
        for helper in helpers:
            req = PingReq(
                probe.seq, self._incarnation, probe.target, self._piggyback(helper.contact)
            )
            actions.append(Send(helper.contact, req))
        return actions

    def _pick_helpers(self, target: PeerId, k: int) -> list[_Record]:
        n = len(self._ids)
        if k <= 0 or n == 0:
            return []
        # A few spare draws so that skipping the target and suspects still finds k.
        picks = self._rng.sample(range(n), min(n, k + 2))
        out: list[_Record] = []
        for i in picks:
            pid = self._ids[i]
            rec = self._view[pid]
            if pid != target and rec.state is _ALIVE:
                out.append(rec)
                if len(out) == k:
                    break
        return out

    def _on_ack(self, now: float, sender: Contact, msg: Ack, actions: list[Action]) -> None:
        probe = self._probe
        spid = sender.peer_id
        if (
            probe is not None
            and probe.seq == msg.seq
            and not probe.acked
            and (spid == probe.target.peer_id or spid in probe.helpers)
        ):
            probe.acked = True
            if not probe.indirect_sent:
                actions.append(SetTimer(_PING_TIMEOUT + str(probe.seq), None))
            return
        relay = self._relays.get(msg.seq)
        if relay is not None and relay.target == spid:
            del self._relays[msg.seq]
            actions.append(SetTimer(_RELAY + str(msg.seq), None))
            ack = Ack(relay.requester_seq, self._incarnation, self._piggyback(relay.requester))
            actions.append(Send(relay.requester, ack))

    def _on_ping_req(
        self, now: float, sender: Contact, msg: PingReq, actions: list[Action]
    ) -> None:
        target = msg.target
        if target.peer_id == self._me.peer_id:
            actions.append(Send(sender, Ack(msg.seq, self._incarnation, self._piggyback(sender))))
            return
        if target.peer_id == sender.peer_id or len(self._relays) >= MAX_PENDING_RELAYS:
            return
        seq = self._next_seq()
        self._relays[seq] = _Relay(sender, msg.seq, target.peer_id)
        actions.append(Send(target, Ping(seq, self._incarnation, self._piggyback(target))))
        # The requester gives up at its next period; so do we.
        actions.append(SetTimer(_RELAY + str(seq), now + self._cfg.protocol_period_s))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & MAX_SEQ
        return self._seq

    # ------------------------------------------------------------------ state changes

    def _apply(self, now: float, update: Member, sender: PeerId, actions: list[Action]) -> None:
        """Apply one statement (gossip, or a sender's own incarnation) from ``sender``."""
        contact = update.contact
        pid = contact.peer_id
        state = update.state
        inc = update.incarnation
        if pid == self._me.peer_id:
            self._about_me(update)
            return
        rec = self._view.get(pid)
        if rec is not None:
            if state is _SUSPECT_STATE and rec.state is _SUSPECT_STATE and inc == rec.incarnation:
                # Not news, but maybe a new accuser confirming it.
                self._suspect(now, rec, inc, update.accuser or sender, actions)
                return
            if not supersedes(state, inc, rec.state, rec.incarnation):
                return
            if state is _ALIVE:
                was_suspect = rec.state is _SUSPECT_STATE
                rec.contact = contact
                rec.state = _ALIVE
                rec.incarnation = inc
                self._gossip.enqueue(rec.snapshot())
                if was_suspect:
                    actions.append(SetTimer(_SUSPECT + pid.raw.hex(), None))
                    actions.append(Emit(MemberAlive(contact, inc)))
            elif state is _SUSPECT_STATE:
                rec.contact = contact
                self._suspect(now, rec, inc, update.accuser or sender, actions)
            else:
                rec.contact = contact
                self._bury(now, rec, inc, actions)
            return
        tomb = self._tombstones.get(pid)
        if tomb is not None:
            if inc <= tomb.incarnation:
                return
            if state is _DEAD:
                tomb.incarnation = inc
                self._gossip.enqueue(Member(tomb.contact, _DEAD, inc))
            elif state is _ALIVE and len(self._view) < self._cfg.max_members:
                del self._tombstones[pid]
                self._admit(contact, inc, actions, joined=False)
                self._gossip.enqueue(update)
            return
        if state is _ALIVE and len(self._view) < self._cfg.max_members:
            self._admit(contact, inc, actions, joined=True)
            self._gossip.enqueue(update)
        elif state is _DEAD and self._cfg.relay_unknown_deaths and self._cfg.max_tombstones > 0:
            # With bounded views the holders of a peer rarely talk to each other, so a
            # death heard second-hand is buried and relayed even if we never held the
            # peer. The tombstone dedups the rumour (each node relays it once) and stops
            # the DHT from feeding the dead contact back in; both stay bounded.
            while len(self._tombstones) >= self._cfg.max_tombstones:
                self._tombstones.popitem(last=False)
            self._tombstones[pid] = _Tombstone(contact, inc, now + self._cfg.tombstone_ttl_s)
            self._gossip.enqueue(update)

    def _about_me(self, update: Member) -> None:
        if update.state is _ALIVE:
            # Someone holds a newer life of ours (gossip from before a restart): adopt
            # it, so that suspicions at that incarnation are refuted above it.
            if update.incarnation > self._incarnation:
                self._incarnation = update.incarnation
            return
        if update.incarnation >= self._incarnation:
            self._incarnation = min(update.incarnation + 1, MAX_INCARNATION)
            self._gossip.enqueue(Member(self._me, _ALIVE, self._incarnation))

    def _admit(self, contact: Contact, inc: int, actions: list[Action], *, joined: bool) -> None:
        pid = contact.peer_id
        self._view[pid] = _Record(contact, _ALIVE, inc)
        self._pos[pid] = len(self._ids)
        self._ids.append(pid)
        self._schedule_probe(pid)
        event = MemberJoined(contact, inc) if joined else MemberAlive(contact, inc)
        actions.append(Emit(event))

    def _suspect(
        self, now: float, rec: _Record, inc: int, accuser: PeerId, actions: list[Action]
    ) -> None:
        """Record that ``accuser`` holds ``rec`` suspect at ``inc`` (>= what we hold)."""
        pid = rec.contact.peer_id
        name = _SUSPECT + pid.raw.hex()
        if rec.state is _ALIVE:
            rec.state = _SUSPECT_STATE
            rec.incarnation = inc
            rec.suspect_start = now
            rec.accusers = [accuser]
            rec.suspect_deadline = now + self.suspicion_timeout(0)
            self._gossip.enqueue(Member(rec.contact, _SUSPECT_STATE, inc, accuser))
            actions.append(SetTimer(name, rec.suspect_deadline))
            actions.append(Emit(MemberSuspect(rec.contact, inc)))
            return
        if inc > rec.incarnation:
            rec.incarnation = inc
            self._gossip.enqueue(Member(rec.contact, _SUSPECT_STATE, inc, accuser))
        accusers = rec.accusers
        if accuser in accusers or len(accusers) > self._cfg.suspicion_confirmations:
            return
        # An independent confirmation: shorten the countdown (never lengthen it) and
        # pass the new accuser on, so that others can count it too.
        accusers.append(accuser)
        self._gossip.enqueue(Member(rec.contact, _SUSPECT_STATE, rec.incarnation, accuser))
        deadline = rec.suspect_start + self.suspicion_timeout(len(accusers) - 1)
        if deadline >= rec.suspect_deadline:
            return
        rec.suspect_deadline = deadline
        if deadline <= now:
            self._bury(now, rec, rec.incarnation, actions)
        else:
            actions.append(SetTimer(name, deadline))

    def _on_suspicion_timeout(self, now: float, name: str, hex_id: str) -> list[Action]:
        try:
            pid = PeerId(bytes.fromhex(hex_id))
        except ValueError:
            return []
        rec = self._view.get(pid)
        if rec is None or rec.state is not _SUSPECT_STATE:
            return []
        if now < rec.suspect_deadline - _TIMER_SLACK_S:
            return [SetTimer(name, rec.suspect_deadline)]
        actions: list[Action] = []
        self._bury(now, rec, rec.incarnation, actions)
        return actions

    def _bury(self, now: float, rec: _Record, inc: int, actions: list[Action]) -> None:
        """Move ``rec`` from the view to the tombstones and announce its death."""
        pid = rec.contact.peer_id
        if rec.state is _SUSPECT_STATE:
            actions.append(SetTimer(_SUSPECT + pid.raw.hex(), None))
        del self._view[pid]
        i = self._pos.pop(pid)
        last = self._ids.pop()
        if last != pid:
            self._ids[i] = last
            self._pos[last] = i
        dead = Member(rec.contact, _DEAD, inc)
        if self._cfg.max_tombstones > 0:
            while len(self._tombstones) >= self._cfg.max_tombstones:
                self._tombstones.popitem(last=False)
            self._tombstones[pid] = _Tombstone(rec.contact, inc, now + self._cfg.tombstone_ttl_s)
        self._gossip.enqueue(dead)
        actions.append(Emit(MemberDead(rec.contact, inc)))

    def _expire_tombstones(self, now: float) -> None:
        tombs = self._tombstones
        while tombs:
            pid, tomb = next(iter(tombs.items()))
            if tomb.expires > now:
                return
            del tombs[pid]

    # ------------------------------------------------------------------ gossip

    def _rumour_about(self, pid: PeerId) -> Member | None:
        """Our statement that ``pid`` is suspect or dead, if we hold one."""
        rec = self._view.get(pid)
        if rec is not None:
            if rec.state is not _SUSPECT_STATE:
                return None
            return Member(rec.contact, _SUSPECT_STATE, rec.incarnation, rec.accusers[0])
        tomb = self._tombstones.get(pid)
        if tomb is not None:
            return Member(tomb.contact, _DEAD, tomb.incarnation)
        return None

    def _piggyback(self, to: Contact) -> tuple[Member, ...]:
        rumour = self._rumour_about(to.peer_id)
        if rumour is None:
            return tuple(self._take_gossip(self._cfg.max_piggyback, None))
        return (rumour, *self._take_gossip(self._cfg.max_piggyback - 1, rumour))

    def _take_gossip(self, n: int, already: Member | None) -> list[Member]:
        skip = None if already is None else already.contact.peer_id
        return self._gossip.take(n, self.retransmit_limit(), skip)

    # ------------------------------------------------------------------ checks

    def check_invariants(self) -> None:
        """Raise AssertionError if internal state is inconsistent (tests, simulator)."""
        cfg = self._cfg
        assert len(self._view) <= cfg.max_members
        assert len(self._tombstones) <= cfg.max_tombstones
        assert len(self._gossip) <= self._gossip.capacity
        assert len(self._relays) <= MAX_PENDING_RELAYS
        assert len(self._ids) == len(self._view) == len(self._pos)
        for i, pid in enumerate(self._ids):
            assert self._pos[pid] == i and pid in self._view
        for pid, rec in self._view.items():
            assert rec.state is not _DEAD and pid not in self._tombstones
            if rec.state is _SUSPECT_STATE:
                assert 1 <= len(rec.accusers) <= cfg.suspicion_confirmations + 1
            assert pid != self._me.peer_id
        assert 0 <= self._incarnation <= MAX_INCARNATION


def _parse_int(text: str) -> int | None:
    if not (text.isascii() and text.isdigit() and len(text) <= 10):
        return None
    return int(text)
