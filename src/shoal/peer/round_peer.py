"""RoundPeer: a PeerCore that also runs a training run's RoundCore, still sans-IO.

``round.*`` messages and ``round/`` timers go to the round core; its DhtPutRequest /
DhtGetRequest become DHT puts signed with this peer's identity and gets whose records
the DHT core has already verified.
"""

from __future__ import annotations

import random

from shoal.dht.core import DhtConfig
from shoal.dht.events import GetDone, PutDone
from shoal.dht.records import SignedRecord
from shoal.effects import Action, Emit, SetTimer
from shoal.identity import Identity
from shoal.membership.config import SwimConfig
from shoal.peer.core import PeerCore, peer_codec
from shoal.rounds.config import RoundConfig
from shoal.rounds.core import RoundCore
from shoal.rounds.events import DhtGetRequest, DhtPutRequest
from shoal.rounds.messages import ROUND_MESSAGES
from shoal.wire.codec import Codec, Message
from shoal.wire.contact import Contact


def rounds_codec() -> Codec:
    codec = peer_codec()
    for t in ROUND_MESSAGES:
        codec.register(t)
    return codec


class RoundPeer(PeerCore):
    def __init__(
        self,
        me: Contact,
        identity: Identity,
        rng: random.Random,
        run: str,
        round_config: RoundConfig,
        dht_config: DhtConfig | None = None,
        swim_config: SwimConfig | None = None,
    ) -> None:
        super().__init__(me, rng, dht_config, swim_config)
        self.identity = identity
        self.rounds = RoundCore(me, run, round_config, random.Random(rng.getrandbits(64)))
        self._seq: dict[bytes, int] = {}
        self._gets: dict[int, str] = {}
        self._puts: set[int] = set()

    def on_message(self, now: float, sender: Contact, msg: Message) -> list[Action]:
        if msg.protocol == "round":
            return self.from_rounds(now, self.rounds.on_message(now, sender, msg))
        return super().on_message(now, sender, msg)

    def on_timer(self, now: float, name: str) -> list[Action]:
        core, _, inner = name.partition("/")
        if core == "round":
            return self.from_rounds(now, self.rounds.on_timer(now, inner))
        return super().on_timer(now, name)

    def from_rounds(self, now: float, actions: list[Action]) -> list[Action]:
        """Translate the round core's actions (call with the result of any of its methods)."""
        out: list[Action] = []
        for a in actions:
            if isinstance(a, SetTimer):
                out.append(SetTimer("round/" + a.name, a.at))
            elif isinstance(a, Emit) and isinstance(a.event, DhtPutRequest):
                req = a.event
                # seq must grow per key across restarts too, so a restarted peer's new
                # progress replaces its old record: wall/virtual time in microseconds.
                seq = max(self._seq.get(req.key, 0) + 1, int(now * 1e6))
                self._seq[req.key] = seq
                rec = SignedRecord.create(self.identity, req.key, req.value, seq, now + req.ttl_s)
                op, acts = self.dht.put(now, rec)
                self._puts.add(op)
                out += self._from_dht(now, acts)
            elif isinstance(a, Emit) and isinstance(a.event, DhtGetRequest):
                op, acts = self.dht.get(now, a.event.key)
                self._gets[op] = a.event.tag  # before the actions: GetDone may be among them
                out += self._from_dht(now, acts)
            else:
                out.append(a)
        return out

    def _from_dht(self, now: float, actions: list[Action]) -> list[Action]:
        out: list[Action] = []
        for a in super()._from_dht(now, actions):
            ev = a.event if isinstance(a, Emit) else None
            if isinstance(ev, GetDone) and ev.op_id in self._gets:
                tag = self._gets.pop(ev.op_id)
                recs = [(r.publisher, r.value) for r in ev.records]
                out += self.from_rounds(now, self.rounds.on_dht_records(now, tag, recs))
            elif isinstance(ev, PutDone) and ev.op_id in self._puts:
                self._puts.discard(ev.op_id)
            else:
                out.append(a)
        return out
