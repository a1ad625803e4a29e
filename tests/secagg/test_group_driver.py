"""Networked SecAgg over real Transports on loopback: weighted mean, identical bits,
dropouts, hostile members and collectors, privacy of what the collector receives."""

from __future__ import annotations

import asyncio
import os

import pytest
import torch
from scipy import stats

from shoal.averaging import AllReduceFailed, AllReduceResult
from shoal.identity.keys import Identity, PeerId
from shoal.privacy import DpPseudoGradients
from shoal.secagg import fixed_point
from shoal.secagg.group_driver import (
    DEFAULT_CLIP,
    MAX_EARLY_SESSIONS,
    CollectorRun,
    MemberRun,
    SecAggService,
    frac_bits_for,
    require_mean,
    secure_average,
)
from shoal.secagg.messages import MaskedInput
from shoal.secagg.network_messages import (
    SHARE_BLOB_BYTES,
    AdvertMsg,
    AdvertsMsg,
    SharesMsg,
    UnmaskMsg,
    session_id,
)
from shoal.secagg.transport_host import TransportHost
from shoal.wire.codec import MalformedMessage, Message
from shoal.wire.contact import Contact
from tests.secagg.hostile import HOSTILE, Hostile
from tests.secagg.net_helpers import group_average, hosts, inputs, run, weighted_mean

K = 5000


def tolerance(n: int, omega: float) -> float:
    """Fixed-point rounding: <= 2^-(f+1) per summed value, divided by the survivors'
    weight fraction; plus fp32 rounding of the result."""
    return n * 2.0 ** -(frac_bits_for(n, DEFAULT_CLIP) + 1) / omega + 1e-7


def ok(results: list[AllReduceResult | BaseException], who: list[int]) -> list[AllReduceResult]:
    out = []
    for i in who:
        r = results[i]
        assert isinstance(r, AllReduceResult), f"member {i}: {r!r}"
        out.append(r)
    return out


def assert_identical(rs: list[AllReduceResult]) -> None:
    assert all(torch.equal(rs[0].average, r.average) for r in rs[1:])


@pytest.mark.parametrize("n", [3, 5])
def test_average_is_the_sample_weighted_mean_with_identical_bits(n: int) -> None:
    xs = inputs(n, K, seed=n)
    ws = [float(16 * (i + 1)) for i in range(n)]

    async def main() -> list[AllReduceResult | BaseException]:
        return await group_average(await hosts(n), xs, ws)

    rs = ok(run(main()), list(range(n)))
    assert_identical(rs)
    err = float((rs[0].average.double() - weighted_mean(xs, ws)).abs().max())
    assert err <= tolerance(n, 1.0), err
    assert rs[0].total_weight == sum(ws) and len(rs[0].contributors) == n
    assert not rs[0].excluded
    # the collector uploads nothing big but the result; members send one masked vector
    assert rs[1].bytes_sent >= 4 * (K + 1) and rs[1].bytes_received >= 4 * K


def test_int8_result_is_identical_and_close() -> None:
    xs, ws = inputs(4, K, seed=1), [1.0, 2.0, 3.0, 4.0]

    async def main() -> list[AllReduceResult | BaseException]:
        return await group_average(await hosts(4), xs, ws, compression="int8")

    rs = ok(run(main()), [0, 1, 2, 3])
    assert_identical(rs)
    exp = weighted_mean(xs, ws)
    # int8: absmax/127 per 4096-value chunk, half a step of rounding
    assert float((rs[0].average.double() - exp).abs().max()) <= float(exp.abs().max()) / 254 + 1e-6
    assert rs[1].bytes_received < 2 * K  # ~1 byte per value


class Crashed(Exception):
    pass


class CrashAfterShares(MemberRun):
    """Sends its shares, then its process 'dies': the transport closes, nothing more."""

    async def after_shares(self) -> None:
        await self.host.transport.aclose()
        raise Crashed


class LateCollector(CollectorRun):
    """Opens its session 1.5 s after the members sent their first adverts."""

    async def run(self) -> AllReduceResult:
        await asyncio.sleep(1.5)
        return await super().run()


def test_collector_opening_late_still_gets_every_advert() -> None:
    xs, ws = inputs(4, K, seed=8), [1.0] * 4

    async def main() -> list[AllReduceResult | BaseException]:
        return await group_average(await hosts(4), xs, ws, collector=LateCollector)

    rs = ok(run(main()), [0, 1, 2, 3])
    assert_identical(rs)
    assert len(rs[0].contributors) == 4 and not rs[0].excluded


def test_member_dying_after_its_shares_is_recovered() -> None:
    n = 5
    xs, ws = inputs(n, K, seed=2), [10.0, 20.0, 30.0, 40.0, 50.0]

    async def main() -> list[AllReduceResult | BaseException]:
        return await group_average(await hosts(n), xs, ws, members={2: CrashAfterShares})

    results = run(main())
    assert isinstance(results[2], Crashed)
    rs = ok(results, [0, 1, 3, 4])
    assert_identical(rs)
    survivors = [0, 1, 3, 4]
    exp = weighted_mean([xs[i] for i in survivors], [ws[i] for i in survivors])
    omega = sum(ws[i] for i in survivors) / sum(ws)
    assert float((rs[0].average.double() - exp).abs().max()) <= tolerance(n, omega)
    assert rs[0].total_weight == sum(ws[i] for i in survivors)
    (gone,) = rs[0].excluded
    assert "unreachable" in rs[0].excluded[gone] or "no masked input" in rs[0].excluded[gone]
    assert len(rs[0].contributors) == 4


class CrashAfterMasked(MemberRun):
    """Its masked input arrives, then it dies before the unmask step."""

    async def send_masked(self, masked: MaskedInput) -> None:
        await super().send_masked(masked)
        await self.host.transport.aclose()
        raise Crashed


def test_member_dying_after_its_masked_input_still_counts() -> None:
    n = 4
    xs, ws = inputs(n, K, seed=7), [1.0, 2.0, 3.0, 4.0]

    async def main() -> list[AllReduceResult | BaseException]:
        return await group_average(await hosts(n), xs, ws, members={3: CrashAfterMasked})

    results = run(main())
    assert isinstance(results[3], Crashed)
    rs = ok(results, [0, 1, 2])
    assert_identical(rs)
    # its masked input is in the sum; the other survivors' shares remove its self mask
    assert float((rs[0].average.double() - weighted_mean(xs, ws)).abs().max()) <= tolerance(n, 1)
    assert len(rs[0].contributors) == 4


def test_too_few_unmask_answers_fail_naming_the_silent() -> None:
    xs, ws = inputs(3, 64), [1.0, 1.0, 1.0]  # threshold 2: the collector alone is short

    async def main() -> list[AllReduceResult | BaseException]:
        return await group_average(
            await hosts(3), xs, ws, members={1: CrashAfterMasked, 2: CrashAfterMasked}
        )

    failed = run(main())[0]
    assert isinstance(failed, AllReduceFailed), failed
    assert len(failed.missing) == 2 and "threshold" in str(failed)


def test_too_many_dropouts_fail_naming_the_missing() -> None:
    xs, ws = inputs(3, 64), [1.0, 1.0, 1.0]  # n = 3: threshold 2

    async def main() -> list[AllReduceResult | BaseException]:
        return await group_average(
            await hosts(3), xs, ws, members={1: CrashAfterShares, 2: CrashAfterShares}
        )

    results = run(main())
    failed = results[0]
    assert isinstance(failed, AllReduceFailed), failed
    assert "threshold" in str(failed) and len(failed.missing) == 2


# ---------------------------------------------------------------- hostile members


@pytest.mark.parametrize("mode", sorted(HOSTILE))
def test_hostile_member_is_left_out_and_the_rest_finish(mode: str) -> None:
    n, bad = 4, 3
    xs, ws = inputs(n, K, seed=3), [5.0, 6.0, 7.0, 8.0]
    cls = type(f"Hostile_{mode}", (Hostile,), {"mode": mode})

    async def main() -> list[AllReduceResult | BaseException]:
        return await group_average(await hosts(n), xs, ws, members={bad: cls})

    results = run(main())
    rs = ok(results, [0, 1, 2])
    assert_identical(rs)
    honest = [0, 1, 2]
    exp = weighted_mean([xs[i] for i in honest], [ws[i] for i in honest])
    omega = sum(ws[i] for i in honest) / sum(ws)
    assert float((rs[0].average.double() - exp).abs().max()) <= tolerance(n, omega)
    (gone,) = rs[0].excluded
    assert HOSTILE[mode] in rs[0].excluded[gone], rs[0].excluded
    assert len(rs[0].contributors) == 3


class KeySwappingCollector(CollectorRun):
    """Relays member 2's advert with a mask key of its own (to read 2's shares)."""

    async def send(self, m: int, msg: Message) -> bool:
        if isinstance(msg, AdvertsMsg):
            evil = os.urandom(32)
            msg = AdvertsMsg(msg.session, tuple(
                (i, e, evil if i == 3 else mk, s) for i, e, mk, s in msg.adverts
            ))  # fmt: skip
        return await super().send(m, msg)


def test_collector_swapping_a_key_is_caught_by_every_member() -> None:
    xs, ws = inputs(4, 64), [1.0] * 4

    async def main() -> list[AllReduceResult | BaseException]:
        hs = await hosts(4)
        results_ids.append(hs[0].contact.peer_id)
        return await group_average(hs, xs, ws, collector=KeySwappingCollector)

    results_ids: list[PeerId] = []

    results = run(main())
    for r in results[1:]:
        assert isinstance(r, AllReduceFailed), r
        assert "relayed invalid adverts" in str(r) and r.missing == [results_ids[0]]
    # member 2 sees its own advert altered; the others see a signature that fails
    assert "own key advert" in str(results[2])
    assert all("signature" in str(results[i]) for i in (1, 3))
    assert isinstance(results[0], AllReduceFailed)  # nobody sent it shares


# ----------------------------------------------------------------------- privacy


def _uniform_p(values: torch.Tensor) -> float:
    """Chi-square p-value that ring elements are uniform (top 8 bits, 256 bins)."""
    counts = torch.bincount((values >> 24).to(torch.int64), minlength=256)
    return float(stats.chisquare(counts.numpy()).pvalue)


class Recording(CollectorRun):
    keep_received = True
    seen: list[dict[int, torch.Tensor]] = []

    async def drive(self) -> AllReduceResult:
        try:
            return await super().drive()
        finally:
            Recording.seen.append(dict(self.received))


def test_what_the_collector_receives_is_independent_of_the_update() -> None:
    """What arrives over the network from member 1 looks uniform on the ring whether
    its update is all zeros or a steep ramp, and does not correlate with the update."""
    k, n = 65536, 4
    ws = [1.0] * n
    others = inputs(n - 1, k, seed=4)
    ramp = torch.linspace(-2.0, 2.0, k)
    Recording.seen = []

    async def one(update: torch.Tensor) -> list[AllReduceResult | BaseException]:
        xs = [others[0], update, *others[1:]]
        return await group_average(await hosts(n), xs, ws, collector=Recording, timeout_s=30)

    for update in (torch.zeros(k), ramp):
        ok(run(one(update)), list(range(n)))
    seen_zero, seen_ramp = Recording.seen[0][1], Recording.seen[1][1]
    assert seen_zero.numel() == k + 1
    assert _uniform_p(seen_zero) > 1e-3 and _uniform_p(seen_ramp) > 1e-3
    assert stats.ks_2samp(seen_zero.numpy(), seen_ramp.numpy()).pvalue > 1e-3
    f = frac_bits_for(n, DEFAULT_CLIP)
    enc = fixed_point.encode(ramp / n, DEFAULT_CLIP, f).double()  # what member 1 encoded
    r = stats.pearsonr(seen_ramp[:k].double().numpy(), enc.numpy()).statistic
    assert abs(r) < 4 / k**0.5


def test_dp_noised_updates_average_through_secagg() -> None:
    """DP noise goes in before masking; the collector sees only the noised sum, and the
    result is the weighted mean of the privatized updates."""
    n = 4
    raw, ws = inputs(n, K, seed=5), [3.0, 1.0, 2.0, 2.0]
    dps = [DpPseudoGradients(0.5, 1.0, generator=torch.Generator().manual_seed(i))
           for i in range(n)]  # fmt: skip
    private = [dp.privatize(x) for dp, x in zip(dps, raw, strict=True)]

    async def main() -> list[AllReduceResult | BaseException]:
        return await group_average(await hosts(n), private, ws)

    rs = ok(run(main()), list(range(n)))
    assert_identical(rs)
    err = float((rs[0].average.double() - weighted_mean(private, ws)).abs().max())
    assert err <= tolerance(n, 1.0)
    assert all(dp.epsilon_spent() > 0 for dp in dps)


# ---------------------------------------------------------- settings and wire


def test_robust_rules_are_refused_with_the_reason() -> None:
    require_mean("mean")
    with pytest.raises(ValueError, match="masks hide each peer's update") as exc:
        require_mean("krum")
    assert "'krum'" in str(exc.value)


def test_bad_arguments_are_refused() -> None:
    async def main() -> None:
        hs = await hosts(3)
        group = [h.contact for h in hs]
        try:
            x = torch.zeros(8)
            with pytest.raises(ValueError, match="weight"):
                await secure_average(hs[0], group, "s", x, [1.0, 0.0, 1.0])
            with pytest.raises(ValueError, match="sorted"):
                await secure_average(hs[0], group[::-1], "s", x, [1.0] * 3)
            with pytest.raises(ValueError, match="NaN"):
                await secure_average(hs[0], group, "s", torch.full((8,), float("nan")), [1.0] * 3)
            with pytest.raises(ValueError, match="compression"):
                await secure_average(hs[0], group, "s", x, [1.0] * 3, compression="zstd")
            alone = await secure_average(hs[0], group[:1], "s", x, [2.0])
            assert torch.equal(alone.average, x) and alone.total_weight == 2.0
        finally:
            for h in hs:
                await h.aclose()

    run(main())


def test_messages_round_trip_and_malformed_fields_are_refused() -> None:
    host = TransportHost()
    SecAggService.attach(host)
    codec = host.codec
    sid = session_id("x")
    msg = SharesMsg(sid, {2: b"a" * SHARE_BLOB_BYTES, 3: b"b" * SHARE_BLOB_BYTES})
    assert codec.decode(codec.encode(msg)) == msg
    um = UnmaskMsg(sid, {1: b"c" * 66}, {4: b"d" * 66})
    assert codec.decode(codec.encode(um)) == um
    bad = [
        SharesMsg(sid, {2: b"a" * (SHARE_BLOB_BYTES - 1)}),  # short blob
        SharesMsg(sid, {0: b"a" * SHARE_BLOB_BYTES}),  # index 0 (ids are 1..n)
        AdvertMsg(b"short", bytes(32), bytes(32), bytes(64)),
        AdvertMsg(sid, bytes(31), bytes(32), bytes(64)),
        UnmaskMsg(sid, {1: b"c" * 65}, {}),
    ]
    for m in bad:
        with pytest.raises(MalformedMessage):
            codec.decode(codec.encode(m))
    dup = codec.encode(AdvertsMsg(sid, ((1, bytes(32), bytes(32), bytes(64)),) * 2))
    with pytest.raises(MalformedMessage, match="twice"):
        codec.decode(dup)


def test_early_adverts_are_held_for_a_bounded_number_of_sessions() -> None:
    host = TransportHost()
    svc = SecAggService.attach(host)
    assert SecAggService.attach(host) is svc
    for i in range(MAX_EARLY_SESSIONS + 5):
        c = Contact(Identity.generate().peer_id, "127.0.0.1:1")
        svc._on_message(c, AdvertMsg(session_id(f"s{i}"), bytes(32), bytes(32), bytes(64)))
    assert len(svc._early) == MAX_EARLY_SESSIONS
    assert session_id("s0") not in svc._early  # oldest dropped first
