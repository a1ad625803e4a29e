"""Secure aggregation among real peers: the sans-IO SecAgg cores over the transport.

    res = await secure_average(node, group, session, flat, weights, timeout_s=60.0)

``group`` is the round's group (sorted by peer id, the same list at every member);
``weights`` are the members' public sample counts (the round core's
``member_samples``). SecAgg ids are 1..n in group order; member 0, the lowest peer id,
is the **collector**: it relays keys and shares, sums the masked inputs, removes the
masks with the survivors' Shamir shares, and sends the *unmasked average* to every
member as one bulk stream (the same bytes to all), so every member applies identical
bits, as with the plain all-reduce. The collector runs a client of its own, fed
locally. It learns the sum and who took part; no member's update, unless ``t`` peers
collude with it (``t = n // 2 + 1``).

Weighting: member i masks ``[x_i * w_i / W, w_i / W]`` (W = sum of all members'
weights, known to all), so the masked sum holds the weighted sum and the weight of
the members that made it in; the average is the first over the second, i.e. the
sample-weighted mean of the survivors. The weight slot is checked against the
survivors' public weights: a sum that disagrees (a member that used another weight, or
sent a random vector) fails the session instead of being applied.

Fixed point: each weighted value is clipped to ``clip`` and encoded with the most
fractional bits for which n summed values cannot wrap Z_2^32 (``frac_bits_for``); for
n = 4 and clip 16 that is 24 bits, a rounding error <= n 2^-25 on the average (times
W over the survivors' weight).

Files: network_session.py (what both roles share: roster, settings, liveness, bulk
receiving, the node's protocol handler), network_collector.py, network_member.py,
network_messages.py (the wire formats, also in docs/PROTOCOL.md).

Steps: adverts -> collector -> every member
(signatures checked against the group roster at both ends) -> encrypted shares ->
collector routes them -> masked inputs as bulk streams -> unmask request to the
survivors -> their shares -> collector unmasks -> result stream. Each collector step
waits for every member at most a fraction of ``timeout_s``; a member found dead
(two failed liveness probes, or three failed sends) is not waited for. A member
dropped after its shares is recovered from the others' shares of its mask key.

Faults and what happens:
- an advert whose signature does not verify, shares that are malformed or do not cover
  every advertiser, a masked stream of the wrong size, one that carries more or fewer
  bytes than announced, or a masked vector outside the ring: that member is left out
  with its reason logged (``AllReduceResult.excluded``); the others finish.
- fewer than ``t`` members left at any step, or a sum whose weight slot is wrong: the
  collector aborts the session and every member raises ``AllReduceFailed`` naming the
  missing members, so the round core re-forms the group (as for the plain all-reduce).
- the collector dead, silent, relaying an advert that does not verify, or sending an
  unusable result: the member raises ``AllReduceFailed([collector])``.
Not defended: a member that follows the protocol but masks a garbage vector (or sends
wrong unmask shares) corrupts the sum undetected unless its weight slot gives it away;
SecAgg hides updates, so no robust rule can look at them (docs/ARCHITECTURE.md). A
lying collector controls the result, as a lying shard owner does in the all-reduce;
the round's model-hash check catches one that sends different results to different
members.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from shoal.averaging.allreduce import AllReduceResult
from shoal.secagg.network_collector import CollectorRun
from shoal.secagg.network_member import MemberRun
from shoal.secagg.network_session import (
    DEFAULT_CLIP,
    MAX_EARLY_SESSIONS,
    PROBE_INTERVAL_S,
    SecAggHost,
    SecAggService,
    SessionRun,
    frac_bits_for,
)
from shoal.wire.contact import Contact

__all__ = [
    "DEFAULT_CLIP",
    "MAX_EARLY_SESSIONS",
    "CollectorRun",
    "MemberRun",
    "SecAggHost",
    "SecAggService",
    "frac_bits_for",
    "require_mean",
    "secure_average",
]

log = logging.getLogger(__name__)

MEAN_ONLY = (
    "secure aggregation works only with aggregator='mean': pairwise masks hide each "
    "peer's update and reveal only the sum, while {rule} needs the individual updates "
    "(order statistics per coordinate, or distances/norms between whole updates)"
)


def require_mean(aggregator: str) -> None:
    """Refuse a robust rule with SecAgg, saying why (see docs/ARCHITECTURE.md)."""
    if aggregator != "mean":
        raise ValueError(MEAN_ONLY.format(rule=repr(aggregator)))


async def secure_average(
    host: SecAggHost,
    group: Sequence[Contact],
    session: str,
    flat: torch.Tensor,
    weights: Sequence[float],
    *,
    compression: str = "none",
    timeout_s: float = 60.0,
    clip: float = DEFAULT_CLIP,
    probe_interval_s: float = PROBE_INTERVAL_S,
    member_type: type[MemberRun] = MemberRun,
    collector_type: type[CollectorRun] = CollectorRun,
) -> AllReduceResult:
    """Sample-weighted mean of ``flat`` over ``group`` by secure aggregation.

    Every member gets identical bits. ``session`` must be unique to this attempt and
    the same at every member (the round's all-reduce session works). ``weights[i]`` is
    member i's public weight. Raises ValueError for bad arguments and AllReduceFailed
    when the sum cannot be completed (retry with the survivors under a new session).
    A group of one returns ``flat`` itself (there is nobody to hide it from).
    """
    ids = [c.peer_id for c in group]
    if len(ids) == 1 and ids[0] == host.transport.peer_id:
        w = float(weights[0])
        return AllReduceResult(flat.clone(), w, ids, {}, 0, 0, [w])
    if ids and ids[0] == host.transport.peer_id:
        run: SessionRun = collector_type(
            host, group, session, flat, weights, compression=compression,
            timeout_s=timeout_s, clip=clip, probe_interval_s=probe_interval_s,
        )  # fmt: skip
    else:
        run = member_type(
            host, group, session, flat, weights, compression=compression,
            timeout_s=timeout_s, clip=clip, probe_interval_s=probe_interval_s,
        )  # fmt: skip
    if run.n == 2:
        log.info(
            "secagg %s: with two members each can work out the other's update from the "
            "average; secure aggregation hides updates only in groups of 3+",
            session,
        )
    return await run.run()
