"""Secure aggregation: exact sums, dropouts, privacy of one peer's update, bad input."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from shoal.secagg import SecAggClient, SecAggCollector, SecAggError, fixed_point, prg, run_local
from shoal.secagg.messages import MaskedInput, UnmaskRequest

N, T, K = 5, 3, 4096


def seeded(seed: int) -> Callable[[int], bytes]:
    r = random.Random(seed)
    return lambda k: r.randbytes(k)


def inputs(n: int = N, k: int = K, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(k, generator=g) for _ in range(n)]


def test_unmasked_sum_equals_plain_sum() -> None:
    xs = inputs()
    res = run_local(xs, T, entropy=seeded(1))
    plain = torch.stack(xs).sum(0)
    # fixed point: each value rounds by <= 2^-17, so the sum by <= N * 2^-17
    assert float((res.total - plain).abs().max()) <= N * 2.0**-17 + 1e-5
    assert res.survivors == (1, 2, 3, 4, 5)


@pytest.mark.parametrize(
    "drops",
    [
        {"drop_after_shares": [2]},
        {"drop_after_shares": [2, 5]},
        {"drop_after_advert": [1], "drop_after_shares": [4]},
        {"drop_after_masked": [3]},
        {"drop_after_shares": [1], "drop_after_masked": [4]},
    ],
)
def test_dropouts_mid_protocol_are_recovered(drops: dict[str, list[int]]) -> None:
    xs = inputs()
    res = run_local(xs, T, entropy=seeded(2), **drops)  # type: ignore[arg-type]
    gone = set(drops.get("drop_after_shares", [])) | set(drops.get("drop_after_advert", []))
    assert set(res.survivors) == set(range(1, N + 1)) - gone
    expected = torch.stack([xs[i - 1] for i in res.survivors]).sum(0)
    assert float((res.total - expected).abs().max()) <= N * 2.0**-17 + 1e-5


def test_too_many_dropouts_fail_clearly() -> None:
    with pytest.raises(SecAggError, match="threshold"):
        run_local(inputs(), T, drop_after_shares=[1, 2, 3])
    with pytest.raises(SecAggError, match="threshold"):
        run_local(inputs(), T, drop_after_masked=[1, 2, 3])


def _uniform_p(values: torch.Tensor) -> float:
    """Chi-square p-value that ring elements are uniform (top 8 bits, 256 bins)."""
    counts = torch.bincount((values >> 24).to(torch.int64), minlength=256)
    return float(stats.chisquare(counts.numpy()).pvalue)


def test_masked_vector_carries_no_information_about_the_update() -> None:
    k = 65536
    zeros = torch.zeros(k)
    ramp = torch.linspace(-4, 4, k)  # a very structured update
    others = inputs(N - 1, k, seed=3)
    seen_zero = run_local([zeros, *others], T, entropy=seeded(4)).masked[1].values
    seen_ramp = run_local([ramp, *others], T, entropy=seeded(5)).masked[1].values
    # Both look uniform on the ring ...
    assert _uniform_p(seen_zero) > 1e-3 and _uniform_p(seen_ramp) > 1e-3
    # ... the two are indistinguishable ...
    assert stats.ks_2samp(seen_zero.numpy(), seen_ramp.numpy()).pvalue > 1e-3
    # ... and uncorrelated with the update behind them.
    enc = fixed_point.encode(ramp, 8.0, 16).double()
    r = stats.pearsonr(seen_ramp.double().numpy(), enc.numpy()).statistic
    assert abs(r) < 4 / k**0.5


def test_a_coalition_below_threshold_cannot_recover_an_update() -> None:
    """Collector + T-1 colluding peers remove every mask they can compute; what is left
    of peer 1's input is still uniform noise, uncorrelated with it."""
    k = 65536
    xs = [torch.linspace(-4, 4, k), *inputs(N - 1, k, seed=6)]
    session = b"coalition"
    clients = [SecAggClient(i, N, T, session, k, clip=8.0, entropy=seeded(10 + i))
               for i in range(1, N + 1)]  # fmt: skip
    col = SecAggCollector(N, T, session, k)
    for c in clients:
        col.on_advert(c.advertise())
    adverts = col.close_adverts()
    for c in clients:
        col.on_shares(c.on_adverts(adverts))
    route = col.close_shares()
    masked = [c.on_shares(route[c.me], xs[c.me - 1]) for c in clients]
    colluders = clients[1:T]  # peers 2..T: T-1 of them
    residual = masked[0].values.clone()
    for c in colluders:  # they know their pairwise seed with peer 1
        seed = prg.agree(c._mask, adverts[1].mask_pk, session, b"pair-mask")
        residual = residual + prg.mask(seed, k)  # peer 1 (< c.me) added +mask
    residual &= fixed_point.MASK
    target = fixed_point.encode(xs[0], 8.0, 16)
    assert _uniform_p(residual) > 1e-3
    assert (
        abs(stats.pearsonr(residual.double().numpy(), target.double().numpy()).statistic)
        < 4 / k**0.5
    )
    assert float(((residual - target) & fixed_point.MASK).eq(0).float().mean()) < 1e-3
    # Their T-1 shares of peer 1's self-mask seed fit *any* seed equally well: for a
    # made-up seed there is a share for a missing peer that completes it.
    from shoal.secagg import shamir

    shares = {c.me: int.from_bytes(c._b_shares[1], "big") for c in colluders}
    fake = bytes(range(32))
    pts = [(0, int.from_bytes(fake, "big")), *shares.items()]
    x = N  # a peer outside the coalition
    y = 0
    for i, (xi, yi) in enumerate(pts):
        num = den = 1
        for j, (xj, _) in enumerate(pts):
            if i != j:
                num, den = num * (x - xj) % shamir.PRIME, den * (xi - xj) % shamir.PRIME
        y = (y + yi * num * pow(den, -1, shamir.PRIME)) % shamir.PRIME
    completed = {i: v.to_bytes(shamir.SHARE_BYTES, "big") for i, v in shares.items()}
    completed[x] = y.to_bytes(shamir.SHARE_BYTES, "big")
    assert shamir.reconstruct(completed, T) == fake != clients[0]._b


def test_client_answers_one_unmask_request_only() -> None:
    xs = inputs(k=16)
    clients = [SecAggClient(i, N, T, b"s", 16, clip=8.0) for i in range(1, N + 1)]
    col = SecAggCollector(N, T, b"s", 16)
    for c in clients:
        col.on_advert(c.advertise())
    ads = col.close_adverts()
    for c in clients:
        col.on_shares(c.on_adverts(ads))
    route = col.close_shares()
    for c in clients:
        col.on_masked(c.on_shares(route[c.me], xs[c.me - 1]))
    first = clients[0].on_unmask_request(UnmaskRequest((1, 2, 3, 4, 5)))
    assert set(first.self_mask) == {1, 2, 3, 4, 5} and not first.mask_key
    # A collector asking again, now calling peer 2 dropped, would get both of 2's
    # secrets (b and mask key) and so 2's input: refused.
    with pytest.raises(SecAggError, match="out of order"):
        clients[0].on_unmask_request(UnmaskRequest((1, 3, 4, 5)))
    with pytest.raises(SecAggError, match="survivor"):
        clients[1].on_unmask_request(UnmaskRequest((1, 2, 9)))
    with pytest.raises(SecAggError, match="threshold"):
        clients[1].on_unmask_request(UnmaskRequest((1, 2)))


def test_bad_messages_are_refused() -> None:
    k = 8
    c1 = SecAggClient(1, 3, 2, b"s", k, clip=1.0)
    c2 = SecAggClient(2, 3, 2, b"s", k, clip=1.0)
    a1, a2 = c1.advertise(), c2.advertise()
    with pytest.raises(SecAggError, match="out of order"):
        c1.advertise()
    with pytest.raises(SecAggError, match="own key"):
        c1.on_adverts({1: dataclasses.replace(a1, mask_pk=a2.mask_pk), 2: a2})
    with pytest.raises(SecAggError, match="share a public key"):
        c1.on_adverts({1: a1, 2: dataclasses.replace(a2, mask_pk=a1.mask_pk)})
    s1 = c1.on_adverts({1: a1, 2: a2})
    s2 = c2.on_adverts({1: a1, 2: a2})
    bad = bytearray(s1.blobs[2])
    bad[0] ^= 1
    with pytest.raises(SecAggError, match="authentication"):
        c2.on_shares({1: bytes(bad)}, torch.zeros(k))
    with pytest.raises(SecAggError, match="shape"):
        c1.on_shares({2: s2.blobs[1]}, torch.zeros(k + 1))
    with pytest.raises(SecAggError, match="NaN"):
        c1.on_shares({2: s2.blobs[1]}, torch.full((k,), float("nan")))
    col = SecAggCollector(3, 2, b"s", k)
    col.on_advert(a1)
    with pytest.raises(SecAggError, match="second"):
        col.on_advert(a1)
    col.on_advert(a2)
    col.on_shares(s1)
    col.on_shares(s2)
    with pytest.raises(SecAggError, match="ring"):
        col.on_masked(MaskedInput(1, torch.full((k,), 1 << 33, dtype=torch.int64)))
    with pytest.raises(SecAggError, match="want"):
        col.on_masked(MaskedInput(1, torch.zeros(k, dtype=torch.float32)))
    with pytest.raises(fixed_point.RingOverflow):
        SecAggClient(1, 3, 2, b"s", k, clip=1e5)
    with pytest.raises(ValueError, match="threshold"):
        SecAggClient(1, 4, 2, b"s", k, clip=1.0)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_any_dropout_schedule_within_tolerance_sums_the_survivors(data: st.DataObject) -> None:
    n = data.draw(st.integers(3, 7), label="n")
    t = data.draw(st.integers(n // 2 + 1, n), label="t")
    ids = list(range(1, n + 1))
    order = data.draw(st.permutations(ids), label="order")
    lost = data.draw(st.integers(0, n), label="lost")
    gone = order[:lost]
    cut = data.draw(st.integers(0, len(gone)), label="cut")
    late = data.draw(st.integers(0, n - len(gone)), label="late")
    after_shares, after_advert = gone[:cut], gone[cut:]
    after_masked = [i for i in ids if i not in gone][:late]
    xs = inputs(n, 64, seed=n)
    kw = {
        "drop_after_advert": after_advert,
        "drop_after_shares": after_shares,
        "drop_after_masked": after_masked,
    }
    if n - len(gone) < t or n - len(gone) - late < t:
        with pytest.raises(SecAggError):
            run_local(xs, t, **kw)  # type: ignore[arg-type]
        return
    res = run_local(xs, t, **kw)  # type: ignore[arg-type]
    assert set(res.survivors) == set(ids) - set(gone)
    expected = torch.stack([xs[i - 1] for i in res.survivors]).sum(0)
    assert float((res.total - expected).abs().max()) <= n * 2.0**-17 + 1e-5


def test_signed_adverts_stop_a_collector_swapping_keys() -> None:
    from shoal.identity.keys import Identity

    ids = {i: Identity.generate() for i in (1, 2, 3)}
    roster = {i: ident.peer_id for i, ident in ids.items()}

    def client(i: int) -> SecAggClient:
        return SecAggClient(i, 3, 2, b"s", 8, clip=1.0, identity=ids[i], roster=roster)

    c1, c2, c3 = client(1), client(2), client(3)
    a1, a2, a3 = c1.advertise(), c2.advertise(), c3.advertise()
    # The collector substitutes its own keys for peer 2's, to read 2's shares.
    evil = SecAggClient(2, 3, 2, b"s", 8, clip=1.0).advertise()
    with pytest.raises(SecAggError, match="signature"):
        c1.on_adverts({1: a1, 2: dataclasses.replace(evil, signature=a2.signature), 3: a3})
    c1b = client(1)
    b1 = c1b.advertise()
    # A signature from another session does not carry over either.
    other = SecAggClient(3, 3, 2, b"other", 8, clip=1.0, identity=ids[3]).advertise()
    with pytest.raises(SecAggError, match="signature"):
        c1b.on_adverts({1: b1, 2: a2, 3: other})
    c1c = client(1)
    ok = c1c.on_adverts({1: c1c.advertise(), 2: a2, 3: a3})
    assert set(ok.blobs) == {2, 3}
