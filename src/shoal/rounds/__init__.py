"""Rounds: the control plane of one DiLoCo outer round, as a sans-IO core.

Follow one round through these files:
- ``config.py``   what a run agrees on (target samples, deadline, group size);
- ``progress.py`` the progress record each peer publishes in the DHT;
- ``moshpit.py``  how the participants of a round are split into groups;
- ``messages.py`` ``round.join`` and ``round.group`` on the wire;
- ``events.py``   what the core asks of the DHT and tells the data plane;
- ``core.py``     the state machine that ties them together.
"""

from shoal.rounds.config import RoundConfig
from shoal.rounds.core import Phase, RoundCore
from shoal.rounds.events import (
    DhtGetRequest,
    DhtPutRequest,
    GroupFallback,
    GroupFormed,
    RoundClosed,
    RoundDone,
)
from shoal.rounds.messages import ROUND_MESSAGES, RoundClose, RoundGroup, RoundJoin
from shoal.rounds.moshpit import moshpit_groups, shard_of

__all__ = [
    "ROUND_MESSAGES",
    "DhtGetRequest",
    "DhtPutRequest",
    "GroupFallback",
    "GroupFormed",
    "Phase",
    "RoundClose",
    "RoundClosed",
    "RoundConfig",
    "RoundCore",
    "RoundDone",
    "RoundGroup",
    "RoundJoin",
    "moshpit_groups",
    "shard_of",
]
