import random

import pytest

from shoal.dht import (
    BootstrapDone,
    DhtConfig,
    GetDone,
    LookupDone,
    PutDone,
    SignedRecord,
    key_for,
)
from shoal.effects import Send, SetTimer
from tests.dht.driver import Network

N = 200
K = 20


@pytest.fixture(scope="module")
def net() -> Network:
    n = Network(N, seed=1)
    n.bootstrap_all()
    return n


def lookup(net: Network, i: int, target: int) -> LookupDone:
    op, actions = net.core(i).start_lookup(net.now, target)
    net.apply(net.contacts[i], actions)
    net.settle()
    ev = net.last_event(i, LookupDone, op)
    assert isinstance(ev, LookupDone)
    return ev


def put(net: Network, i: int, record: SignedRecord) -> PutDone:
    op, actions = net.core(i).put(net.now, record)
    net.apply(net.contacts[i], actions)
    net.settle()
    ev = net.last_event(i, PutDone, op)
    assert isinstance(ev, PutDone)
    return ev


def get(net: Network, i: int, key: bytes) -> GetDone:
    op, actions = net.core(i).get(net.now, key)
    net.apply(net.contacts[i], actions)
    net.settle()
    ev = net.last_event(i, GetDone, op)
    assert isinstance(ev, GetDone)
    return ev


def holders(net: Network, key: bytes) -> list[int]:
    return [
        i
        for i, c in enumerate(net.contacts)
        if c.peer_id not in net.dead and net.cores[c.peer_id].store.get(key, net.now)
    ]


def test_bootstrap_completes_everywhere(net: Network) -> None:
    for i in range(N):
        ev = net.last_event(i, BootstrapDone)
        assert isinstance(ev, BootstrapDone)
        assert ev.ok == (i > 0)  # node 0 had nobody to ask
        assert len(net.core(i).table) >= K
    assert all(c.active_ops == 0 for c in net.cores.values())


def test_lookups_find_the_true_k_closest(net: Network) -> None:
    rng = random.Random(7)
    hops = []
    for _ in range(30):
        i = rng.randrange(N)
        target = rng.getrandbits(256)
        ev = lookup(net, i, target)
        assert ev.ok and ev.target == target
        want = net.true_closest(target, K, exclude=net.contacts[i].peer_id)
        assert [c.peer_id for c in ev.closest] == want
        hops.append(ev.hops)
    assert all(1 <= h <= 6 for h in hops)
    assert max(hops) >= 2  # 200 nodes do not all fit one table: some lookups hop


def test_put_then_get_from_elsewhere(net: Network) -> None:
    key = key_for("model/v1")
    pubs = [3, 77, 150]
    for seq, i in enumerate(pubs):
        r = SignedRecord.create(net.ids[i], key, b"addr-%d" % i, seq, net.now + 600)
        done = put(net, i, r)
        assert done.key == key and K <= done.stored <= K + 1
    # The holders are the true k closest to the key as each publisher sees it (a
    # publisher's own lookup excludes itself), plus publishers that kept a copy.
    pos = int.from_bytes(key, "big")
    closest = {
        net.index[p] for i in pubs for p in net.true_closest(pos, K, net.contacts[i].peer_id)
    }
    assert set(holders(net, key)) <= closest | set(pubs)
    assert len(holders(net, key)) >= K
    ev = get(net, 120, key)
    assert [r.publisher for r in ev.records] == sorted(net.ids[i].peer_id for i in pubs)
    assert {r.value for r in ev.records} == {b"addr-%d" % i for i in pubs}
    assert ev.hops >= 1
    # A newer seq from one publisher replaces its older record everywhere it lands.
    put(net, 77, SignedRecord.create(net.ids[77], key, b"moved", 10, net.now + 600))
    ev = get(net, 10, key)
    assert {r.value for r in ev.records} == {b"addr-3", b"moved", b"addr-150"}
    assert get(net, 10, key_for("nothing here")).records == []


def test_records_expire_at_holders() -> None:
    net = Network(60, seed=2)
    net.bootstrap_all()
    key = key_for("short-lived")
    t0 = net.now
    put(net, 5, SignedRecord.create(net.ids[5], key, b"x", 1, t0 + 100))
    assert len(holders(net, key)) >= K
    net.run_until(t0 + 60)
    assert len(holders(net, key)) >= K
    assert len(get(net, 30, key).records) == 1
    net.run_until(t0 + 200)  # the expire timer (every 60 s) has run since expiry
    assert sum(c.record_count for c in net.cores.values()) == 0
    assert get(net, 30, key).records == []


def test_republish_restores_records_after_holders_die() -> None:
    cfg = DhtConfig(republish_interval_s=300.0, rpc_timeout_s=2.0)
    net = Network(120, config=cfg, seed=3)
    net.bootstrap_all()
    key = key_for("survivor")
    pub = 0
    put(net, pub, SignedRecord.create(net.ids[pub], key, b"still here", 1, net.now + 3000))
    for i in holders(net, key):
        if i != pub:
            net.dead.add(net.contacts[i].peer_id)
    assert [i for i in holders(net, key) if i != pub] == []
    net.run_until(300.0 + 30.0)  # one republish round (t=300), then settle
    alive_holders = [i for i in holders(net, key) if i != pub]
    assert len(alive_holders) >= K - 1
    reader = next(
        i
        for i in range(1, 120)
        if net.contacts[i].peer_id not in net.dead and i not in alive_holders
    )
    assert [r.value for r in get(net, reader, key).records] == [b"still here"]


def test_lookups_complete_when_many_contacts_are_dead() -> None:
    cfg = DhtConfig(rpc_timeout_s=1.0)
    net = Network(100, config=cfg, seed=4)
    net.bootstrap_all()
    net.run_until(cfg.refresh_interval_s + 10)  # one bucket-refresh round fills tables
    rng = random.Random(5)
    for i in rng.sample(range(1, 100), 50):
        net.dead.add(net.contacts[i].peer_id)
    live = [i for i in range(100) if net.contacts[i].peer_id not in net.dead]
    for _ in range(10):
        i = rng.choice(live)
        target = rng.getrandbits(256)
        start = net.now
        ev = lookup(net, i, target)
        assert ev.ok
        assert all(c.peer_id not in net.dead for c in ev.closest)
        # Half the swarm died silently, so every table still lists dead peers and
        # replies carry fewer live ones; the nearest live peers are always found.
        want = net.true_closest(target, K, exclude=net.contacts[i].peer_id)
        assert [c.peer_id for c in ev.closest[:5]] == want[:5]
        assert net.now - start <= 30.0
    assert all(net.cores[net.contacts[i].peer_id].pending_rpcs == 0 for i in live)
    # Once membership reports the dead (remove_contact), lookups are exact again.
    for i in live:
        core = net.cores[net.contacts[i].peer_id]
        for pid in sorted(net.dead):
            net.apply(net.contacts[i], core.remove_contact(pid))
    assert all(
        c.peer_id not in net.dead
        for i in live
        for c in net.cores[net.contacts[i].peer_id].contacts()
    )
    for _ in range(10):
        i = rng.choice(live)
        target = rng.getrandbits(256)
        ev = lookup(net, i, target)
        assert [c.peer_id for c in ev.closest] == net.true_closest(
            target, K, exclude=net.contacts[i].peer_id
        )


def test_node_with_only_dead_contacts_finishes_with_no_result() -> None:
    cfg = DhtConfig(rpc_timeout_s=1.0)
    net = Network(30, config=cfg, seed=6)
    net.bootstrap_all()
    for i in range(1, 30):
        net.dead.add(net.contacts[i].peer_id)
    start = net.now
    ev = lookup(net, 0, 12345)
    assert not ev.ok and ev.closest == [] and ev.hops == 0
    assert net.now - start <= 30.0
    # Repeated failures evicted the dead contacts (max_fails=3 by default).
    # Each lookup asks every known contact; promoted replacements need their own 3.
    for j in range(6):
        lookup(net, 0, random.Random(j).getrandbits(256))
    assert len(net.core(0).table) == 0 and net.core(0).table.cache_size == 0


def test_unreachable_fails_rpcs_immediately() -> None:
    net = Network(30, seed=8)
    net.bootstrap_all()
    core = net.core(0)
    _, actions = core.start_lookup(net.now, 99)
    sent = [a for a in actions if isinstance(a, Send)]
    assert len(sent) == 3 and core.pending_rpcs == 3  # alpha
    dead = sent[0].to
    out = core.on_unreachable(net.now, dead)
    # Its RPC's timer is cancelled and the lookup moves on to another contact at once.
    assert SetTimer(f"rpc:{sent[0].msg.rid}", None) in out  # type: ignore[attr-defined]
    again = [a for a in out if isinstance(a, Send)]
    assert len(again) == 1 and again[0].to != dead
    assert core.pending_rpcs == 3


def run_scenario(seed: int) -> list[object]:
    cfg = DhtConfig(republish_interval_s=100.0, refresh_interval_s=200.0, rpc_timeout_s=2.0)
    net = Network(30, config=cfg, seed=seed)
    net.record_trace = True
    net.bootstrap_all()
    rng = random.Random(seed)
    key = key_for("det")
    put(net, 1, SignedRecord.create(net.ids[1], key, b"v", 1, 500.0))
    for _ in range(5):
        lookup(net, rng.randrange(30), rng.getrandbits(256))
    net.dead.add(net.contacts[7].peer_id)
    get(net, 20, key)
    net.run_until(450.0)  # expire, republish and refresh timers all fire
    return net.trace


def test_same_seed_same_actions() -> None:
    a = run_scenario(11)
    b = run_scenario(11)
    assert len(a) > 1000
    assert a == b
