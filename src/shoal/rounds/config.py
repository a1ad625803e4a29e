"""What every peer of a run must agree on for rounds to line up."""

from __future__ import annotations

import math
from dataclasses import dataclass

from shoal.wire.limits import MAX_LIST_ITEMS


@dataclass(frozen=True, slots=True)
class RoundConfig:
    """Run-wide round parameters. Peers with different values form different groups,
    so these belong in the run's configuration, not in a node's."""

    # The round closes once the swarm has processed this many samples...
    target_samples: int
    # ...or this many seconds after the peer started the round, whichever comes first.
    deadline_s: float
    # Largest averaging group (Moshpit group). Bounded by one message's list size.
    group_size: int
    # How long a group leader collects ``round.join`` after it closes the round. Must
    # exceed the spread of close times between peers: one poll interval plus a DHT get.
    join_window_s: float
    # Longest gap between two progress polls; polls come sooner when the estimated
    # time to the target is shorter (never sooner than min_poll_interval_s).
    poll_interval_s: float = 5.0
    min_poll_interval_s: float = 1.0
    # Progress is re-published at most this often (each publish is a DHT put).
    publish_interval_s: float = 5.0
    # A member that joined a leader waits join_window_s + this for ``round.group``
    # before it tries the next leader of its group.
    group_timeout_s: float = 5.0
    # Leaders tried (the smallest PeerId of the group, then the next...) before a
    # member falls back to a group of one.
    max_leader_tries: int = 2
    # At the deadline the peer re-reads progress; it closes when the reads return or
    # after this long.
    final_poll_timeout_s: float = 2.0
    # Progress is spread over this many DHT keys so no key exceeds the per-key
    # publisher limit (256) and a peer reads O(group) records, not O(swarm). With 1
    # the key is exactly ``{run}/round/{r}`` and every peer reads everybody.
    progress_shards: int = 1
    # Other shards read per poll to estimate the swarm's total (when shards > 1).
    # If 1 + estimate_shards >= progress_shards, every shard is read and the total
    # is exact.
    estimate_shards: int = 2
    # A peer's announced samples count at most this much toward closing (0: no cap),
    # so one lying peer cannot close a round early on its own.
    max_peer_samples: int = 0
    # Mixed into the group partition; lets a run re-randomise its groups.
    group_seed: bytes = b""
    # Progress records live this long (0: 2 * deadline_s + 60).
    record_ttl_s: float = 0.0

    def __post_init__(self) -> None:
        if self.target_samples < 1:
            raise ValueError("target_samples must be >= 1")
        for name in (
            "deadline_s",
            "join_window_s",
            "poll_interval_s",
            "min_poll_interval_s",
            "publish_interval_s",
            "group_timeout_s",
            "final_poll_timeout_s",
        ):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if self.min_poll_interval_s > self.poll_interval_s:
            raise ValueError("min_poll_interval_s must not exceed poll_interval_s")
        if not 1 <= self.group_size <= MAX_LIST_ITEMS:
            raise ValueError(f"group_size must be in [1, {MAX_LIST_ITEMS}]")
        if self.max_leader_tries < 1:
            raise ValueError("max_leader_tries must be >= 1")
        if self.progress_shards < 1:
            raise ValueError("progress_shards must be >= 1")
        if self.estimate_shards < 0:
            raise ValueError("estimate_shards must be >= 0")
        if self.max_peer_samples < 0:
            raise ValueError("max_peer_samples must be >= 0")
        if not (math.isfinite(self.record_ttl_s) and self.record_ttl_s >= 0):
            raise ValueError("record_ttl_s must be >= 0")

    @property
    def ttl_s(self) -> float:
        return self.record_ttl_s or 2 * self.deadline_s + 60.0

    @staticmethod
    def shards_for(expected_peers: int, group_size: int) -> int:
        """A shard count for a swarm of about ``expected_peers``: about two groups'
        worth of peers per shard, and never more than 128 publishers per key."""
        per_shard = max(1, min(2 * group_size, MAX_LIST_ITEMS // 2))
        return max(1, math.ceil(expected_peers / per_shard))
