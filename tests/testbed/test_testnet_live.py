"""The testbed measured from inside: RTT, bandwidth, loss, partitions, kill, and
idempotent up/down that leaves nothing behind. Root only (skips with the reason)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from typing import Any

import pytest

from shoal.testbed import applier, state
from shoal.testbed.profiles import LinkProfile
from tests.testbed.conftest import SHOAL, Factory, run_in

pytestmark = pytest.mark.testbed


def _ping(st: state.TestnetState, src: str, dst_addr: str, count: int, wait: float = 1) -> str:
    p = subprocess.run(
        [*SHOAL, "testnet", "exec", src, "--name", st.name, "--",
         "ping", "-U", "-n", "-c", str(count), "-i", "0.05", "-W", str(wait), dst_addr],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return p.stdout


def _received(ping_out: str) -> int:
    m = re.search(r"(\d+) received", ping_out)
    assert m, ping_out
    return int(m.group(1))


def _wait_iperf_server(st: state.TestnetState, host: str, timeout_s: float = 20.0) -> None:
    """Until iperf3's control port listens in HOST (its start through the CLI can take
    longer than a fixed sleep on a loaded machine). Bounded: 40 polls at most."""
    deadline = time.monotonic() + timeout_s
    for _ in range(40):
        if run_in(st, host, "ss", "-Hltn", "sport = :5201").strip():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    raise AssertionError(f"iperf3 did not listen in {host} within {timeout_s:.0f} s")


def _udp_lost_percent(report: dict[str, Any]) -> float:
    """The receiver-side loss of an ``iperf3 -u -J`` client report. Where iperf puts it
    varies (end.sum, end.sum_received, or only per stream); once in CI ``end`` had no
    ``sum`` at all, so look in each place and show the report if none has it."""
    end = report.get("end", {})
    for key in ("sum", "sum_received"):
        if "lost_percent" in end.get(key, {}):
            return float(end[key]["lost_percent"])
    streams = [s["udp"] for s in end.get("streams", []) if "lost_percent" in s.get("udp", {})]
    if len(streams) == 1:
        return float(streams[0]["lost_percent"])
    raise AssertionError(f"no loss figure in iperf3's report: {json.dumps(report)[-3000:]}")


def test_up_is_idempotent_and_down_leaves_nothing(testnet: Factory) -> None:
    st = testnet(2, "wan")
    again = applier.up(st.name, 2, st.profile)
    assert [h.delayer_pid for h in again.hosts] == [h.delayer_pid for h in st.hosts]
    sleeper = subprocess.Popen([*SHOAL, "testnet", "exec", "h1", "--name", st.name, "--",
                                "sleep", "300"])  # fmt: skip
    deadline = time.monotonic() + 10
    while sleeper.pid not in applier.workload_pids(st, "h1") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleeper.pid in applier.workload_pids(st, "h1")
    removed = applier.down(st.name)
    assert sorted(removed) == sorted([f"shoal-{st.name}-sw", *(h.netns for h in st.hosts)])
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    for h in st.hosts:
        assert h.delayer_pid is not None and not applier._alive(h.delayer_pid)
    assert not [ns for ns in applier.list_netns() if ns.startswith(f"shoal-{st.name}-")]
    assert not state.state_path(st.name).exists()
    assert applier.down(st.name) == []  # twice is fine


def test_rtt_between_two_wan_hosts_is_50ms(testnet: Factory) -> None:
    st = testnet(2, "wan")
    out = _ping(st, "h0", st.hosts[1].addr, 60)
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    assert m, out
    avg = float(m.group(1))
    assert 45.0 <= avg <= 55.0, out


def test_bulk_transfer_runs_at_100_mbit(testnet: Factory) -> None:
    st = testnet(2, "wan")
    for h in st.hosts:  # measure the shaped rate; one TCP flow cannot fill a 1% lossy path
        applier.shape(st.name, h.name, loss_pct=0.0)
    server = subprocess.Popen([*SHOAL, "testnet", "exec", "h1", "--name", st.name, "--",
                               "iperf3", "-s", "-1", "-B", st.hosts[1].addr],
                              stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_iperf_server(st, "h1")
        out = run_in(st, "h0", "iperf3", "-c", st.hosts[1].addr, "-t", "6", "-O", "2", "-J")
        mbit = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
        assert 85.0 <= mbit <= 115.0, mbit
    finally:
        server.wait(timeout=30)


def test_loss_is_per_packet_with_offloads_off(testnet: Factory) -> None:
    st = testnet(2, "lan")
    for h in st.hosts:
        feats = run_in(st, h.name, "ethtool", "-k", "eth0")
        assert re.search(r"^tcp-segmentation-offload: off", feats, re.M), feats
        assert re.search(r"^generic-segmentation-offload: off", feats, re.M), feats
    applier.shape(st.name, "h1", loss_pct=10.0)
    errors = []
    for _ in range(UDP_ATTEMPTS):
        report = _udp_run(st, ["-b", "8M", "-l", "1200", "-t", "4"])
        if "error" not in report:
            break
        errors.append(report["error"])
    else:
        raise AssertionError(f"iperf3 failed {UDP_ATTEMPTS} times: {errors}")
    lost = _udp_lost_percent(report)
    # ~3300 datagrams: 10% +- 3 sigma (sigma ~0.5%)
    assert 8.0 <= lost <= 12.0, lost


# iperf3 sets a UDP test up with one datagram each way and does not resend it: on a 10%
# lossy link that fails now and then ("unable to read from stream socket", exit 0),
# seen in CI and here. A fresh server and client per try; 5 tries all fail ~1e-4.
UDP_ATTEMPTS = 5


def _udp_run(st: state.TestnetState, args: list[str]) -> dict[str, Any]:
    """One ``iperf3 -u`` test from h0 to a one-off server in h1: the client's report."""
    server = subprocess.Popen([*SHOAL, "testnet", "exec", "h1", "--name", st.name, "--",
                               "iperf3", "-s", "-1", "-B", st.hosts[1].addr],
                              stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_iperf_server(st, "h1")
        out = run_in(st, "h0", "iperf3", "-u", *args, "-c", st.hosts[1].addr, "-J")
        report: dict[str, Any] = json.loads(out)
        return report
    finally:
        try:
            server.wait(timeout=10)  # it exits after a test; not always after a failed one
        except subprocess.TimeoutExpired:
            server.kill()  # by its own PID (testnet exec execs iperf3 in place)
            server.wait(timeout=10)


def test_partition_blocks_and_heal_restores(testnet: Factory) -> None:
    st = testnet(4, "lan")
    addr = {h.name: h.addr for h in st.hosts}
    assert _received(_ping(st, "h0", addr["h2"], 3)) == 3
    p = subprocess.run([*SHOAL, "testnet", "partition", "h0,h1/h2,h3", "--name", st.name],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert _received(_ping(st, "h0", addr["h1"], 3)) == 3  # same side
    assert _received(_ping(st, "h0", addr["h2"], 5)) == 0
    assert _received(_ping(st, "h3", addr["h1"], 5)) == 0
    # TCP too: a connect across the cut times out instead of being refused
    probe = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(1.5)\n"
        "try: s.connect((sys.argv[1], 9)); print('connected')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except TimeoutError: print('timeout')\n"
    )
    assert run_in(st, "h0", "python3", "-c", probe, addr["h2"]).strip() == "timeout"
    assert run_in(st, "h0", "python3", "-c", probe, addr["h1"]).strip() == "refused"
    status = json.loads(
        subprocess.run(
            [*SHOAL, "testnet", "status", "--json", "--name", st.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert status["partition"] == [["h0", "h1"], ["h2", "h3"]]
    p = subprocess.run(
        [*SHOAL, "testnet", "heal", "--name", st.name], capture_output=True, text=True
    )
    assert p.returncode == 0
    assert _received(_ping(st, "h0", addr["h2"], 3)) == 3
    assert run_in(st, "h0", "python3", "-c", probe, addr["h2"]).strip() == "refused"


def test_kill_host_kills_its_processes_but_not_its_links(testnet: Factory) -> None:
    st = testnet(2, "wan")
    sleeper = subprocess.Popen([*SHOAL, "testnet", "exec", "h1", "--name", st.name, "--",
                                "sleep", "300"])  # fmt: skip
    deadline = time.monotonic() + 10
    while not applier.workload_pids(st, "h1") and time.monotonic() < deadline:
        time.sleep(0.05)
    p = subprocess.run([*SHOAL, "testnet", "kill", "h1", "--name", st.name],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0 and "killed 1" in p.stdout, p.stdout
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    assert applier._alive(st.hosts[1].delayer_pid or -1)
    assert _received(_ping(st, "h0", st.hosts[1].addr, 10)) >= 8


def test_cli_errors_are_clear(testnet: Factory) -> None:
    st = testnet(2, "lan")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*SHOAL, "testnet", *args], capture_output=True, text=True)

    for args, msg in [
        (("exec", "h7", "--name", st.name, "--", "true"), "no host 'h7'"),
        (("partition", "h0/h5", "--name", st.name), "no host 'h5'"),
        (("partition", "h0", "--name", st.name), "two non-empty groups"),
        (("kill", "h9", "--name", st.name), "no host 'h9'"),
        (("exec", "h0", "--name", "nosuch", "--", "true"), "not up"),
        (("up", "--hosts", "2", "--profile", "mars", "--name", "x"), "unknown profile"),
        (("up", "--hosts", "0", "--name", "x"), "--hosts must be"),
    ]:
        p = cli(*args)
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        assert msg in p.stderr, (args, p.stderr)


def test_without_root_up_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(applier.TestbedError, match="needs root"):
        applier.up("x", 2, LinkProfile("p", 10, 10, 0))
    with pytest.raises(applier.TestbedError, match="needs root"):
        applier.down("x")


def test_check_reports_kernel_support(live: None) -> None:
    p = subprocess.run([*SHOAL, "testnet", "check", "--json"], capture_output=True, text=True)
    report = json.loads(p.stdout)
    names = {f["name"]: f["ok"] for f in report["features"]}
    assert names["root"] and names["tc tbf"] and names["nft numgen + drop"]
    assert report["delay"] in ("netem", "nfqueue") and report["usable"] is True
    assert p.returncode == 0
    assert not [ns for ns in applier.list_netns() if ns.startswith("shoal-probe-")]
