"""Tunables of the SWIM core, with the reason for each default."""

from __future__ import annotations

from dataclasses import dataclass

# Most gossip entries one message may carry on the wire. A decoded message with more is
# malformed. An entry is about 70 bytes (32-byte id, a short address, two small ints),
# so 64 entries keep any SWIM message under ~5 KB, far below MAX_MESSAGE_BYTES.
MAX_PIGGYBACK_WIRE = 64

# ping-reqs we will relay at once. An honest swarm asks each node for about
# ``indirect_probes`` relays per failed probe, a handful per period; 64 absorbs bursts
# (many peers probing one dead node) while a ping-req flood cannot grow our state.
MAX_PENDING_RELAYS = 64


@dataclass(frozen=True, slots=True)
class SwimConfig:
    # One probe per period. 1 s is SWIM's and memberlist's LAN default: detection time
    # scales with it, probe traffic with its inverse.
    protocol_period_s: float = 1.0
    # Wait for a direct ack before asking others to probe for us. Must cover one RTT
    # plus scheduling jitter; 0.3 s leaves 0.7 s of the period for the indirect round.
    ping_timeout_s: float = 0.3
    # Peers asked to probe indirectly. 3 is SWIM's k: the chance that all k relays are
    # also cut off from the target falls geometrically, and traffic grows linearly.
    indirect_probes: int = 3
    # A suspect becomes dead after ``suspicion_mult * max(1, log10(n)) * period``
    # (memberlist's LAN value 4). The log term gives the refutation time to spread
    # through larger views, where gossip needs O(log n) rounds to reach everyone.
    suspicion_mult: float = 4.0
    # Lifeguard's dynamic suspicion: a suspicion starts at ``suspicion_max_mult`` times
    # that minimum and falls (logarithmically) to the minimum as independent accusers
    # confirm it. 6 is memberlist's value. A lone accuser (often the node that is
    # itself cut off) then leaves the accused ~6x longer to refute, while a real crash,
    # which many probers notice, is buried at the minimum.
    suspicion_max_mult: float = 6.0
    # Independent accusers that bring the timeout down to the minimum (capped at the
    # view size less two). With ``n`` probers a crashed member meets a new prober about
    # once a period, so 3 costs a few periods of detection time.
    suspicion_confirmations: int = 3
    # Bound on the probed view (alive + suspect). 512 makes a local swarm of a few
    # hundred full membership, while a 10,000-node swarm costs 512 entries per node,
    # not 10,000 (see the trade-off in core.py).
    max_members: int = 512
    # Gossip entries per message. 16 entries are ~1.1 KB: a ping stays one small
    # segment so its RTT measures liveness, not bandwidth, yet a burst of changes
    # (a join storm) drains in few periods.
    max_piggyback: int = 16
    # Each update is retransmitted ``retransmit_mult * ceil(log2(n + 1))`` times. SWIM
    # shows O(log n) retransmissions reach everyone with high probability; 4 is
    # memberlist's default safety factor.
    retransmit_mult: int = 4
    # How long a dead member is remembered. It must outlive the gossip about that
    # member (O(log n) periods) so a stale ``alive`` cannot resurrect it, and is the
    # delay before a dead contact fed back by add_member is probed again.
    tombstone_ttl_s: float = 60.0
    # Bound on remembered dead members; the oldest tombstone is forgotten first.
    max_tombstones: int = 512
    # Bury and relay deaths of peers outside our view. Beyond max_members the peers
    # that hold a crashed peer are mostly not in each other's views, so without relays
    # each finds the crash only by probing it itself (up to a full pass of its view).
    relay_unknown_deaths: bool = True

    def __post_init__(self) -> None:
        if not self.protocol_period_s > 0:
            raise ValueError("protocol_period_s must be positive")
        if not 0 < self.ping_timeout_s < self.protocol_period_s:
            raise ValueError("ping_timeout_s must be positive and below protocol_period_s")
        if self.indirect_probes < 0:
            raise ValueError("indirect_probes must be >= 0")
        if not self.suspicion_mult > 0:
            raise ValueError("suspicion_mult must be positive")
        if not self.suspicion_max_mult >= 1:
            raise ValueError("suspicion_max_mult must be >= 1")
        if self.suspicion_confirmations < 0:
            raise ValueError("suspicion_confirmations must be >= 0")
        if self.max_members < 1:
            raise ValueError("max_members must be >= 1")
        if not 1 <= self.max_piggyback <= MAX_PIGGYBACK_WIRE:
            raise ValueError(f"max_piggyback must be in [1, {MAX_PIGGYBACK_WIRE}]")
        if self.retransmit_mult < 1:
            raise ValueError("retransmit_mult must be >= 1")
        if not self.tombstone_ttl_s > 0:
            raise ValueError("tombstone_ttl_s must be positive")
        if self.max_tombstones < 0:
            raise ValueError("max_tombstones must be >= 0")
