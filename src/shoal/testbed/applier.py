"""Build, change and tear down a testnet by running ip/tc/nft/iptables.

Every step is recorded in the state file before the next one starts, and ``down``
also sweeps namespaces by name prefix, so a crash half-way through ``up`` still
leaves nothing behind after ``down``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from shoal.testbed import kernel, state
from shoal.testbed.delayer import READY_LINE
from shoal.testbed.plan import (
    HOST_IFACE,
    NFQUEUE_NUM,
    PREFIX,
    PlanError,
    TestnetPlan,
    blocked_for,
    host_commands,
    host_ruleset,
    make_plan,
    nfqueue_rule,
    shape_commands,
    switch_commands,
)
from shoal.testbed.profiles import LinkProfile
from shoal.testbed.state import HostState, TestnetState

log = logging.getLogger(__name__)

CMD_TIMEOUT_S = 30.0
DELAYER_READY_S = 20.0
KILL_WAIT_S = 10.0


class TestbedError(RuntimeError):
    pass


def run(argv: Sequence[str], stdin: str | None = None) -> str:
    try:
        p = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=CMD_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TestbedError(f"{' '.join(argv)}: {exc}") from exc
    if p.returncode != 0:
        raise TestbedError(f"{' '.join(argv)}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def require_root() -> None:
    if os.geteuid() != 0:
        raise TestbedError(
            "shoal testnet needs root (network namespaces, tc and nftables); run it with sudo"
        )


def list_netns() -> list[str]:
    out = run(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(ns: str) -> list[int]:
    try:
        out = run(["ip", "netns", "pids", ns])
    except TestbedError:
        return []
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0); it is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_pids(pids: Sequence[int]) -> None:
    """SIGKILL each process by its own PID and wait until it is gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT_S
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.02)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


# -- up -------------------------------------------------------------------------------
def up(name: str, hosts: int, profile: LinkProfile) -> TestnetState:
    require_root()
    plan = make_plan(name, hosts, profile)
    old = state.load(name)
    if old is not None and _matches(old, plan) and _healthy(old):
        log.info("testnet %s is already up", name)
        return old
    down(name)  # a different or broken testnet by this name: rebuild from nothing
    feats = kernel.probe()
    missing = kernel.missing_required(feats)
    if missing:
        raise TestbedError(
            "this machine cannot run the testbed: "
            + "; ".join(f"{f.name}: {f.detail}" for f in missing)
        )
    method = "none" if profile.rtt_ms == 0 else kernel.delay_method(feats)
    if method is None:
        raise TestbedError(
            "no way to add delay: the kernel has no netem and NFQUEUE is unavailable "
            "(need iptables with the NFQUEUE target and the NetfilterQueue package: "
            "pip install 'shoal[testbed]'); run `shoal testnet check`"
        )
    st = TestnetState(
        name=name, profile=profile, delay=method,
        iptables=kernel.pick_iptables() if method == "nfqueue" else None,
        hosts=[HostState(h.name, h.netns, h.addr, profile.rate_mbit, profile.loss_pct)
               for h in plan.hosts],
    )  # fmt: skip
    state.save(st)  # before anything exists, so ``down`` knows what to sweep
    try:
        for cmd in switch_commands(plan):
            run(cmd)
        for h in plan.hosts:
            for cmd in host_commands(plan, h):
                run(cmd)
            for cmd in shape_commands(plan, h, profile.rate_mbit, method == "netem"):
                _run_tolerant_del(cmd)
            run(["ip", "netns", "exec", h.netns, "nft", "-f", "-"],
                stdin=host_ruleset(profile.loss_pct, []))  # fmt: skip
            if method == "nfqueue":
                st.host(h.name).delayer_pid = _start_delayer(st, h.netns, profile.rtt_ms / 2)
                state.save(st)
                assert st.iptables is not None
                run(["ip", "netns", "exec", h.netns, *nfqueue_rule(st.iptables)])
        st.complete = True
        state.save(st)
    except BaseException:
        down(name)
        raise
    return st


def _run_tolerant_del(cmd: Sequence[str]) -> None:
    # ``tc qdisc del`` of a root that is still the default fails harmlessly
    if "del" in cmd and "qdisc" in cmd:
        with contextlib.suppress(TestbedError):
            run(cmd)
        return
    run(cmd)


def _start_delayer(st: TestnetState, ns: str, delay_ms: float) -> int:
    logs = state.log_dir(st.name)
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"delayer-{ns}.log"
    with open(path, "wb") as logf:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "shoal.testbed.delayer",
             "--queue", str(NFQUEUE_NUM), "--delay-ms", f"{delay_ms:g}"],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives this CLI call; ``down`` ends it by PID
        )  # fmt: skip
    deadline = time.monotonic() + DELAYER_READY_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TestbedError(f"delay holder in {ns} exited: {path.read_text()[-500:]}")
        if READY_LINE in path.read_text():
            return proc.pid
        time.sleep(0.05)
    raise TestbedError(f"delay holder in {ns} did not start; see {path}")


def _matches(st: TestnetState, plan: TestnetPlan) -> bool:
    return st.profile == plan.profile and [h.name for h in st.hosts] == [h.name for h in plan.hosts]


def _healthy(st: TestnetState) -> bool:
    if not st.complete:
        return False
    present = set(list_netns())
    if f"{PREFIX}{st.name}-sw" not in present:
        return False
    for h in st.hosts:
        if h.netns not in present:
            return False
        if st.delay == "nfqueue" and (h.delayer_pid is None or not _alive(h.delayer_pid)):
            return False
    return True


# -- down -----------------------------------------------------------------------------
def down(name: str) -> list[str]:
    """Kill every process in the testnet's namespaces, delete the namespaces (which
    takes their links, qdiscs and nft tables with them) and the state. Idempotent."""
    require_root()
    prefix = f"{PREFIX}{name}-"
    removed: list[str] = []
    for ns in list_netns():
        if not ns.startswith(prefix):
            continue
        kill_pids(netns_pids(ns))
        run(["ip", "netns", "del", ns])
        removed.append(ns)
    st = state.load(name)
    if st is not None:  # delayers are in a namespace, but be sure they are gone
        kill_pids([h.delayer_pid for h in st.hosts if h.delayer_pid and _is_delayer(h.delayer_pid)])
    state.remove(name)
    logs = state.log_dir(name)
    if logs.is_dir():
        for f in logs.iterdir():
            f.unlink()
        logs.rmdir()
    return removed


def _is_delayer(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"shoal.testbed.delayer" in f.read()
    except OSError:
        return False


# -- changes to a running testnet -----------------------------------------------------
def load_running(name: str) -> TestnetState:
    require_root()
    st = state.load(name)
    if st is None or not st.complete:
        raise TestbedError(f"testnet {name!r} is not up (run `shoal testnet up`)")
    return st


def _plan(st: TestnetState) -> TestnetPlan:
    return make_plan(st.name, len(st.hosts), st.profile)


def _apply_rulesets(st: TestnetState) -> None:
    blocked = blocked_for(_plan(st), st.partition)
    for h in st.hosts:
        run(["ip", "netns", "exec", h.netns, "nft", "-f", "-"],
            stdin=host_ruleset(h.loss_pct, blocked[h.name]))  # fmt: skip


def partition(name: str, groups: list[list[str]]) -> TestnetState:
    st = load_running(name)
    st.partition = groups
    _apply_rulesets(st)
    state.save(st)
    return st


def heal(name: str) -> TestnetState:
    st = load_running(name)
    st.partition = []
    _apply_rulesets(st)
    state.save(st)
    return st


def shape(
    name: str, host: str, rate_mbit: float | None = None, loss_pct: float | None = None
) -> TestnetState:
    """Change one host's bandwidth (both directions) or input loss."""
    st = load_running(name)
    try:
        h = st.host(host)
    except KeyError:
        raise PlanError(f"no host {host!r} in testnet {name!r}") from None
    if rate_mbit is not None:
        if not rate_mbit > 0:
            raise PlanError("rate must be > 0")
        h.rate_mbit = rate_mbit
        plan = _plan(st)
        for cmd in shape_commands(plan, plan.host(host), rate_mbit, st.delay == "netem"):
            _run_tolerant_del(cmd)
    if loss_pct is not None:
        if not 0 <= loss_pct <= 100:
            raise PlanError("loss must be in [0, 100]")
        h.loss_pct = loss_pct
        _apply_rulesets(st)
    state.save(st)
    return st


def workload_pids(st: TestnetState, host: str) -> list[int]:
    h = st.host(host)
    return [p for p in netns_pids(h.netns) if p != h.delayer_pid]


def kill_host(name: str, host: str) -> list[int]:
    """SIGKILL everything running on HOST except the testbed's own delay holder."""
    st = load_running(name)
    try:
        pids = workload_pids(st, host)
    except KeyError:
        raise PlanError(f"no host {host!r} in testnet {name!r}") from None
    kill_pids(pids)
    return pids


def exec_argv(name: str, host: str, cmd: list[str]) -> list[str]:
    st = load_running(name)
    try:
        ns = st.host(host).netns
    except KeyError:
        raise PlanError(f"no host {host!r} in testnet {name!r}") from None
    if not cmd:
        raise PlanError("nothing to run: give a command after --")
    return ["ip", "netns", "exec", ns, *cmd]


def status(name: str) -> dict[str, object]:
    st = state.load(name)
    if st is None:
        return {"name": name, "up": False}
    present = set(list_netns()) if os.geteuid() == 0 else set()
    hosts = []
    for h in st.hosts:
        hosts.append({
            "name": h.name, "netns": h.netns, "addr": h.addr, "iface": HOST_IFACE,
            "rate_mbit": h.rate_mbit, "loss_pct": h.loss_pct,
            "netns_present": h.netns in present,
            "delayer_pid": h.delayer_pid,
            "delayer_alive": bool(h.delayer_pid and _alive(h.delayer_pid)),
            "pids": workload_pids(st, h.name) if h.netns in present else [],
        })  # fmt: skip
    return {
        "name": st.name, "up": st.complete and _healthy(st), "complete": st.complete,
        "profile": st.to_json()["profile"], "delay": st.delay, "partition": st.partition,
        "hosts": hosts,
    }  # fmt: skip
