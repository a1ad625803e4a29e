"""PeerCore: the DHT and SWIM cores of one peer, wired together, still sans-IO.

Both runtimes (asyncio node, simulator) drive exactly this object, so the glue
between discovery and failure detection is tested once:

- a peer the DHT discovers becomes a SWIM member (so it gets probed);
- a member SWIM declares dead leaves the DHT routing table;
- a member SWIM sees alive again (restarted, refuted) is re-added to the DHT.

Messages are routed to a core by the protocol prefix of their type
(``dht.*``, ``swim.*``) and timer names get a ``dht/`` or ``swim/`` prefix.
"""

from __future__ import annotations

import random

from shoal.dht.core import DhtConfig, DhtCore
from shoal.dht.events import ContactSeen
from shoal.dht.messages import DHT_MESSAGES
from shoal.dht.records import SignedRecord
from shoal.effects import Action, Emit, Send, SetTimer
from shoal.membership.config import SwimConfig
from shoal.membership.core import SwimCore
from shoal.membership.events import MemberAlive, MemberDead, MemberJoined
from shoal.membership.messages import SWIM_MESSAGES
from shoal.wire.codec import Codec, Message
from shoal.wire.contact import Contact


def peer_codec() -> Codec:
    return Codec([*DHT_MESSAGES, *SWIM_MESSAGES])


class UnroutableMessage(Exception):
    pass


class PeerCore:
    def __init__(
        self,
        me: Contact,
        rng: random.Random,
        dht_config: DhtConfig | None = None,
        swim_config: SwimConfig | None = None,
    ) -> None:
        self.me = me
        self.dht = DhtCore(me, dht_config or DhtConfig(), rng)
        self.swim = SwimCore(me, swim_config or SwimConfig(), rng)

    # -- commands --------------------------------------------------------------
    def start(self, now: float, bootstrap: list[Contact]) -> list[Action]:
        out = self._from_swim(now, self.swim.start(now))
        for c in bootstrap:
            if c.peer_id != self.me.peer_id:
                out += self._from_swim(now, self.swim.add_member(now, c))
        out += self._from_dht(now, self.dht.bootstrap(now, [c for c in bootstrap]))
        return out

    def lookup(self, now: float, target: int) -> tuple[int, list[Action]]:
        op, acts = self.dht.start_lookup(now, target)
        return op, self._from_dht(now, acts)

    def put(self, now: float, record: SignedRecord) -> tuple[int, list[Action]]:
        op, acts = self.dht.put(now, record)
        return op, self._from_dht(now, acts)

    def get(self, now: float, key: bytes) -> tuple[int, list[Action]]:
        op, acts = self.dht.get(now, key)
        return op, self._from_dht(now, acts)

    # -- events ----------------------------------------------------------------
    def on_message(self, now: float, sender: Contact, msg: Message) -> list[Action]:
        proto = msg.protocol
        if proto == "dht":
            return self._from_dht(now, self.dht.on_message(now, sender, msg))
        if proto == "swim":
            return self._from_swim(now, self.swim.on_message(now, sender, msg))
        raise UnroutableMessage(f"no core handles {msg.TYPE!r}")

    def on_timer(self, now: float, name: str) -> list[Action]:
        core, _, inner = name.partition("/")
        if core == "dht":
            return self._from_dht(now, self.dht.on_timer(now, inner))
        if core == "swim":
            return self._from_swim(now, self.swim.on_timer(now, inner))
        return []

    def on_unreachable(self, now: float, contact: Contact) -> list[Action]:
        out = self._from_swim(now, self.swim.on_unreachable(now, contact))
        out += self._from_dht(now, self.dht.on_unreachable(now, contact))
        return out

    # -- glue ------------------------------------------------------------------
    def _from_dht(self, now: float, actions: list[Action]) -> list[Action]:
        out: list[Action] = []
        for a in actions:
            if isinstance(a, SetTimer):
                out.append(SetTimer("dht/" + a.name, a.at))
            elif isinstance(a, Emit) and isinstance(a.event, ContactSeen):
                out += self._from_swim(now, self.swim.add_member(now, a.event.contact))
                out.append(a)
            else:
                out.append(a)
        return out

    def _from_swim(self, now: float, actions: list[Action]) -> list[Action]:
        out: list[Action] = []
        for a in actions:
            if isinstance(a, SetTimer):
                out.append(SetTimer("swim/" + a.name, a.at))
                continue
            if isinstance(a, Emit):
                ev = a.event
                if isinstance(ev, MemberDead):
                    out += self._from_dht(now, self.dht.remove_contact(ev.contact.peer_id))
                elif isinstance(ev, MemberAlive | MemberJoined):
                    out += self._from_dht(now, self.dht.add_contact(now, ev.contact))
            out.append(a)
        return out


__all__ = ["PeerCore", "Send", "UnroutableMessage", "peer_codec"]
