"""The topology plan and the rulesets it renders (pure data, no root needed)."""

from __future__ import annotations

import pytest

from shoal.testbed.plan import (
    PlanError,
    blocked_for,
    host_commands,
    host_ruleset,
    make_plan,
    parse_partition,
    shape_commands,
    tbf_args,
)
from shoal.testbed.profiles import PROFILES, LinkProfile, get_profile


def test_wan_profile_is_the_issue_s_numbers() -> None:
    wan = get_profile("wan")
    assert (wan.rate_mbit, wan.rtt_ms, wan.loss_pct) == (100.0, 50.0, 1.0)
    assert set(PROFILES) == {"wan", "lan", "lossy"}


@pytest.mark.parametrize(
    "kwargs", [{"rate_mbit": 0}, {"rtt_ms": -1}, {"rtt_ms": 1e6}, {"loss_pct": 101}]
)
def test_profile_rejects_nonsense(kwargs: dict[str, float]) -> None:
    base = {"name": "x", "rate_mbit": 10.0, "rtt_ms": 10.0, "loss_pct": 0.0}
    with pytest.raises(ValueError):
        LinkProfile(**{**base, **kwargs})  # type: ignore[arg-type]


def test_unknown_profile_names_the_choices() -> None:
    with pytest.raises(ValueError, match="wan, lan, lossy"):
        get_profile("satellite")


def test_plan_names_fit_interface_limits() -> None:
    plan = make_plan("tn", 8, get_profile("wan"))
    assert [h.name for h in plan.hosts] == [f"h{i}" for i in range(8)]
    assert plan.switch_netns == "shoal-tn-sw"
    assert all(h.netns.startswith("shoal-tn-") for h in plan.hosts)
    assert len({h.addr for h in plan.hosts}) == 8
    assert all(len(h.switch_port) < 16 for h in plan.hosts)


@pytest.mark.parametrize("name", ["", "Tn", "1tn", "way-too-long", "a/b", "tn x"])
def test_bad_names_rejected(name: str) -> None:
    with pytest.raises(PlanError):
        make_plan(name, 2, get_profile("wan"))


@pytest.mark.parametrize("hosts", [0, -1, 201])
def test_bad_host_counts_rejected(hosts: int) -> None:
    with pytest.raises(PlanError):
        make_plan("tn", hosts, get_profile("wan"))


def test_every_command_stays_in_the_testnet_namespaces() -> None:
    plan = make_plan("tn", 2, get_profile("wan"))
    for h in plan.hosts:
        cmds = host_commands(plan, h) + shape_commands(plan, h, 100.0, netem=False)
        cmds += shape_commands(plan, h, 100.0, netem=True)
        for cmd in cmds:
            text = " ".join(cmd)
            # every command names one of our namespaces (ip -n NS / ip netns exec NS / add NS)
            assert "shoal-tn-" in text, text


def test_offloads_turned_off_on_both_veth_ends() -> None:
    plan = make_plan("tn", 1, get_profile("wan"))
    cmds = [" ".join(c) for c in host_commands(plan, plan.hosts[0])]
    assert sum("ethtool -K" in c and "tso off gso off" in c for c in cmds) == 2


def test_tbf_burst_and_limit_scale_with_rate() -> None:
    slow, fast = tbf_args(10.0), tbf_args(1000.0)
    assert slow[:3] == ("tbf", "rate", "10mbit") and fast[2] == "1000mbit"
    assert int(slow[4]) >= 1514 and int(fast[4]) > int(slow[4])
    assert int(fast[6]) > int(slow[6])


def test_ruleset_loss_and_partition() -> None:
    text = host_ruleset(1.0, ["10.231.0.3", "10.231.0.4"])
    assert "numgen random mod 10000 < 100 drop" in text
    assert "elements = { 10.231.0.3, 10.231.0.4 }" in text
    assert "ip saddr @blocked drop" in text and "ip daddr @blocked drop" in text
    # replaced atomically: create-if-missing, delete, recreate in one nft transaction
    assert text.index("delete table") < text.index("set blocked")
    assert "numgen" not in host_ruleset(0.0, [])


def test_partition_groups_and_blocked_addresses() -> None:
    plan = make_plan("tn", 5, get_profile("lan"))
    groups = parse_partition("h0,h1/h2,h3", plan)
    assert groups == [["h0", "h1"], ["h2", "h3"]]
    blocked = blocked_for(plan, groups)
    assert blocked["h0"] == ["10.231.0.3", "10.231.0.4"]
    assert blocked["h3"] == ["10.231.0.1", "10.231.0.2"]
    assert blocked["h4"] == []  # named in no group: keeps every link


@pytest.mark.parametrize("spec", ["h0,h1", "h0/", "/h1", "h0/h0", "h0/h9", "h0,h1/h1"])
def test_bad_partitions_rejected(spec: str) -> None:
    plan = make_plan("tn", 3, get_profile("lan"))
    with pytest.raises(PlanError):
        parse_partition(spec, plan)
