"""SWIM-style membership and failure detection, as a sans-IO protocol core."""

from shoal.membership.config import SwimConfig
from shoal.membership.core import SwimCore
from shoal.membership.events import (
    MemberAlive,
    MemberDead,
    MemberJoined,
    MembershipEvent,
    MemberSuspect,
)
from shoal.membership.messages import SWIM_MESSAGES, Ack, Gossip, Ping, PingReq
from shoal.membership.state import Member, MemberState, supersedes

__all__ = [
    "SWIM_MESSAGES",
    "Ack",
    "Gossip",
    "Member",
    "MemberAlive",
    "MemberDead",
    "MemberJoined",
    "MemberState",
    "MemberSuspect",
    "MembershipEvent",
    "Ping",
    "PingReq",
    "SwimConfig",
    "SwimCore",
    "supersedes",
]
