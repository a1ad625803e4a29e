"""The real CPU image: built offline on a debootstrap base, run as a 3-container swarm.

Runs wherever dockerd can start (CI runs as root); elsewhere it skips with the exact
reason. The containers are started with the same command lines, security options
and files as compose.yaml's node0..node2, on a bridge network inside a namespace of
their own, and must finish their rounds with bit-identical models. Logs land in
build/docker-swarm/ (shown with ``pytest -s``).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.training.run_config import dump_run_config, load_run_config
from tests.deploy import docker_harness as harness
from tests.deploy.docker_harness import IMAGE_TAG, DockerInNetns, Unavailable

yaml: Any = importlib.import_module("yaml")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "docker" / "compose.yaml"
LOGS = ROOT / "build" / "docker-swarm"
NODES = 3
ROUNDS = 3
SWARM_TIMEOUT_S = 420.0
HEALTHY_WITHIN_S = 120.0
READYZ_EVERY_S = 3.0
# /readyz from inside a container (its port is not published): "STATUS BODY"
READYZ = (
    "import urllib.request as u, urllib.error as e\n"
    "try:\n"
    "    r = u.urlopen('http://127.0.0.1:9090/readyz', timeout=3); print(r.status, r.read())\n"
    "except e.HTTPError as x:\n"
    "    print(x.code, x.read())\n"
)


@pytest.fixture(scope="module")
def docker() -> Iterator[DockerInNetns]:
    d = DockerInNetns()
    try:
        try:
            d.start()
            d.import_base()
        except Unavailable as exc:
            pytest.skip(f"cannot run Docker here: {exc}")
        yield d
    finally:
        d.close()


def _run_args(
    name: str, svc: dict[str, Any], files: dict[str, Path], compose: dict[str, Any]
) -> list[str]:
    """``docker run`` arguments equivalent to compose.yaml's service ``name``."""
    args = ["run", "-d", "--name", name, "--hostname", svc["hostname"],
            "--network", "shoal-net", "--network-alias", name,
            # the image's HEALTHCHECK, polled faster so a short run shows its states
            "--health-interval", "2s"]  # fmt: skip
    if svc.get("read_only"):
        args.append("--read-only")
    for t in svc.get("tmpfs", []):
        args += ["--tmpfs", t]
    for c in svc.get("cap_drop", []):
        args += ["--cap-drop", c]
    for o in svc.get("security_opt", []):
        args += ["--security-opt", o]
    if "mem_limit" in svc:
        args += ["--memory", svc["mem_limit"]]
    for k, v in (svc.get("environment") or {}).items():
        args += ["-e", f"{k}={v}"]
    for kind in ("configs", "secrets"):
        for ref in svc.get(kind, []):
            src = files.get(ref["source"]) or COMPOSE.parent / compose[kind][ref["source"]]["file"]
            args += ["-v", f"{src}:{ref['target']}:ro"]
    return [*args, IMAGE_TAG, *svc["command"]]


def _wait_healthy(docker: DockerInNetns, name: str) -> None:
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while time.monotonic() < deadline:
        st = json.loads(docker.check("inspect", name))[0]["State"]
        if st.get("Health", {}).get("Status") == "healthy":
            return
        assert st["Running"], f"{name} exited {st['ExitCode']}: {docker.docker('logs', name)}"
        time.sleep(1)
    raise AssertionError(f"{name} not healthy within {HEALTHY_WITHIN_S}s")


# debootstrap (first run only, then cached) + offline build + run + teardown: ~3-9 min
# on 2 busy cores; pyproject's 300 s default would cut it off.
@pytest.mark.timeout(1500)
def test_image_builds_and_three_containers_train_a_round(docker: DockerInNetns) -> None:
    build_s = docker.build_image(ROOT)
    inspect = json.loads(docker.check("image", "inspect", IMAGE_TAG))[0]
    assert inspect["Config"]["User"] == "10001:10001"
    assert "/healthz" in " ".join(inspect["Config"]["Healthcheck"]["Test"])
    uid = docker.check("run", "--rm", "--entrypoint", "id", IMAGE_TAG, "-u").strip()
    assert uid == "10001"
    torch_v = docker.check(
        "run", "--rm", "--entrypoint", "python3", IMAGE_TAG, "-c",
        "import torch; print(torch.__version__, torch.cuda.is_available())",
    ).strip()  # fmt: skip
    assert torch_v == "2.13.0+cpu False"
    size_mb = int(inspect["Size"]) // 2**20

    compose = yaml.safe_load(COMPOSE.read_text())
    cfg = load_run_config(COMPOSE.parent / compose["configs"]["run"]["file"])
    cfg.expected_peers = cfg.world = NODES
    cfg.rounds = ROUNDS
    run_toml = docker.root / "run.toml"
    run_toml.write_text(dump_run_config(cfg))
    docker.check("network", "create", "shoal-net")
    names = [f"node{i}" for i in range(NODES)]
    health: dict[str, set[str]] = {n: set() for n in names}
    for name in names:
        docker.check(*_run_args(name, compose["services"][name], {"run": run_toml}, compose))
        if name == "node0":  # compose: the others depend_on node0 being healthy
            _wait_healthy(docker, name)
            health[name].add("healthy")

    failed_checks: dict[str, set[str]] = {n: set() for n in names}
    readyz: dict[str, str] = {}
    last_exec: dict[str, float] = {}
    deadline = time.monotonic() + SWARM_TIMEOUT_S
    while time.monotonic() < deadline:
        states = {n: json.loads(docker.check("inspect", n))[0]["State"] for n in names}
        for n, st in states.items():
            if "Health" in st:
                health[n].add(st["Health"]["Status"])
                for entry in st["Health"]["Log"] or []:
                    if entry["ExitCode"] != 0:
                        failed_checks[n].add(f"{entry['Start'][11:19]} {entry['Output'][-160:]}")
            # every few seconds only: each probe starts a Python in the container
            due = time.monotonic() - last_exec.get(n, 0.0) > READYZ_EVERY_S
            if st["Running"] and due and readyz.get(n, "").split(" ")[0] != "200":
                last_exec[n] = time.monotonic()
                r = docker.docker("exec", n, "python3", "-c", READYZ, timeout=30)
                readyz[n] = (r.stdout + r.stderr).strip()[-200:]
        if not any(st["Running"] for st in states.values()):
            break
        time.sleep(1)
    LOGS.mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        r = docker.docker("logs", name)
        (LOGS / f"{name}.log").write_text(r.stdout + r.stderr)
        state = json.loads(docker.check("inspect", name))[0]["State"]
        assert not state["Running"], f"{name} still running after {SWARM_TIMEOUT_S}s"
        assert state["ExitCode"] == 0, f"{name} exited {state['ExitCode']}; see {LOGS}"
        docker.check("cp", f"{name}:/var/lib/shoal/result.json", str(LOGS / f"{name}.result.json"))
        results.append(json.loads((LOGS / f"{name}.result.json").read_text()))
    summary = {
        "build_s": round(build_s, 1),
        "image_mb": size_mb,
        "torch": torch_v,
        "health_states": {n: sorted(s) for n, s in health.items()},
        "failed_health_checks": {n: sorted(s) for n, s in failed_checks.items()},
        "readyz_seen_in_container": readyz,
        "rounds": [r["rounds"] for r in results],
        "final_model_hash": sorted({r["final_model_hash"] for r in results}),
        "group_sizes": [[h["group_size"] for h in r["history"]] for r in results],
    }
    (LOGS / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    assert all(r["rounds"] == ROUNDS for r in results)
    assert len({r["final_model_hash"] for r in results}) == 1
    assert any(h["group_size"] == NODES for r in results for h in r["history"])
    # Docker's own HEALTHCHECK (the image's /healthz probe) saw every node healthy,
    # and /readyz answered 200 inside each container while it trained.
    assert all("healthy" in s for s in health.values()), health
    assert all(readyz.get(n, "").startswith("200 ") for n in names), readyz

    # The image's default command: a plain node (`node start`, data dir added by the
    # entrypoint) on a read-only root, healthy and ready as a seed, and stopped
    # cleanly by SIGTERM (`docker stop`).
    docker.check(
        "run", "-d", "--name", "plain", "--read-only", "--cap-drop", "ALL",
        "--health-interval", "2s", IMAGE_TAG,
    )  # fmt: skip
    _wait_healthy(docker, "plain")
    r = docker.docker("exec", "plain", "python3", "-c", READYZ, timeout=30)
    assert r.stdout.startswith("200 ") and '"stage": "joined"' in r.stdout, r.stdout + r.stderr
    docker.check("stop", "-t", "20", "plain", timeout=60)
    state = json.loads(docker.check("inspect", "plain"))[0]["State"]
    (LOGS / "plain.log").write_text(docker.docker("logs", "plain").stderr)
    assert state["ExitCode"] == 0, f"plain node exited {state['ExitCode']} on SIGTERM"


# -- the skip reasons are exact (and a failed start leaves nothing behind) -------------


def test_reason_when_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    d = DockerInNetns()
    try:
        with pytest.raises(Unavailable, match="not root"):
            d.start()
    finally:
        d.close()
    assert not d.root.exists()


def test_reason_when_docker_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("the not-root reason comes first")
    monkeypatch.setattr(harness, "DOCKERD", "/nonexistent/dockerd")
    d = DockerInNetns()
    try:
        with pytest.raises(Unavailable, match="/nonexistent/dockerd missing"):
            d.start()
    finally:
        d.close()


def test_reason_when_dockerd_dies_and_cleanup(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and ip(8) to get as far as starting dockerd")
    fake = tmp_path / "dockerd"
    fake.write_text("#!/bin/sh\necho 'failed to start daemon: fake reason' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(harness, "DOCKERD", str(fake))
    d = DockerInNetns()
    try:
        with pytest.raises(Unavailable, match=r"(?s)exit 1.*fake reason"):
            d.start()
    finally:
        d.close()
    assert d.name not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                        text=True, check=True).stdout  # fmt: skip
    assert not d.root.exists()
    assert str(d.root) not in Path("/proc/mounts").read_text()
