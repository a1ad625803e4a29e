"""Inference-only edge mode: serve the newest checkpoint that verifies, nothing else."""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from shoal.runtime.http import HttpError
from shoal.training.checkpoint import Checkpoint, save_checkpoint
from shoal.training.demo import DemoConfig, node_config, start_node, wait_contact
from shoal.training.inference import (
    MAX_NEW_TOKENS,
    MAX_PROMPT_BYTES,
    ModelServer,
    _parse_predict,
    generate,
    latest_verified,
)
from shoal.training.model import GPT, GPTConfig
from tests.deploy.probes import get, shoal, wait_addr, wait_status

SMALL = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32)


def _model(seed: int) -> GPT:
    return GPT(SMALL, seed=seed)


def _save(path: Path, model: GPT, rnd: int) -> str:
    params = {n: p.detach() for n, p in model.named_parameters()}
    return save_checkpoint(path, Checkpoint(params, rnd))


def _flip_byte(path: Path, offset_from_end: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_newest_verified_wins_and_corrupt_files_are_skipped(tmp_path: Path) -> None:
    assert latest_verified(tmp_path) is None
    assert latest_verified(tmp_path / "missing") is None
    _save(tmp_path / "round1.safetensors", _model(1), 1)
    h3 = _save(tmp_path / "round3.safetensors", _model(3), 3)
    _save(tmp_path / "round5.safetensors", _model(5), 5)
    _flip_byte(tmp_path / "round5.safetensors")  # a flipped weight byte
    (tmp_path / "round9.safetensors").write_bytes(b"not a checkpoint")
    (tmp_path / "notes.txt").write_text("ignored")
    found = latest_verified(tmp_path)
    assert found is not None
    path, ckpt = found
    assert (path.name, ckpt.round, ckpt.model_hash) == ("round3.safetensors", 3, h3)


def test_a_rounds_readout_is_served_before_its_state(tmp_path: Path) -> None:
    params = {n: p.detach() for n, p in _model(2).named_parameters()}
    h = save_checkpoint(tmp_path / "model-round4.safetensors",
                        Checkpoint(params, 4, None, {"kind": "readout"}))  # fmt: skip
    _save(tmp_path / "round4.safetensors", _model(4), 4)  # sorts after it by name
    _save(tmp_path / "round3.safetensors", _model(3), 3)
    found = latest_verified(tmp_path)
    assert found is not None and (found[0].name, found[1].model_hash) == (
        "model-round4.safetensors",
        h,
    )
    _flip_byte(tmp_path / "model-round4.safetensors")  # a corrupt readout: the state
    found = latest_verified(tmp_path)
    assert found is not None and found[0].name == "round4.safetensors"


def test_server_swaps_only_to_newer_verified_models(tmp_path: Path) -> None:
    server = ModelServer(tmp_path, lambda: _model(0))
    assert server.refresh() is False and server.served is None
    h2 = _save(tmp_path / "a.safetensors", _model(2), 2)
    assert server.refresh() is True
    assert server.served is not None and server.served.model_hash == h2
    assert server.refresh() is False  # nothing new
    _save(tmp_path / "b.safetensors", _model(1), 1)  # older round: ignored
    assert server.refresh() is False and server.served.model_hash == h2
    # the served weights are the checkpoint's, tied head included
    trained = _model(2)
    x = torch.randint(0, 256, (1, 8))
    assert torch.equal(server.served.model(x), trained.eval()(x))
    # a checkpoint of another architecture does not replace a working model
    other = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32))
    _save(tmp_path / "c.safetensors", other, 7)
    assert server.refresh() is False
    assert server.served.model_hash == h2


def test_generate_is_greedy_and_bounded() -> None:
    model = _model(4).eval()
    out = generate(model, b"def f(", 5)
    assert len(out["completion"].encode("utf-8", errors="replace")) >= 1
    assert out == generate(model, b"def f(", 5)  # deterministic
    probs = [p for _, p in out["next_token_top"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0001
    # prompts longer than the context are cut to the last block_size bytes
    assert generate(model, b"x" * 500, 1)["next_token_top"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{", 400),
        (b"\xff\xfe", 400),
        (b"[1]", 422),
        (b"{}", 422),
        (b'{"prompt": ""}', 422),
        (b'{"prompt": 5}', 422),
        (b'{"prompt": "a", "tokens": -1}', 422),
        (b'{"prompt": "a", "tokens": true}', 422),
        (b'{"prompt": "a", "tokens": 1.5}', 422),
        (json.dumps({"prompt": "a", "tokens": MAX_NEW_TOKENS + 1}).encode(), 422),
        (json.dumps({"prompt": "a" * (MAX_PROMPT_BYTES + 1)}).encode(), 413),
    ],
)
def test_bad_predict_requests(body: bytes, status: int) -> None:
    with pytest.raises(HttpError) as info:
        _parse_predict(body)
    assert info.value.status == status


# -- a real inference-only edge node ---------------------------------------------------


def _predict(addr: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/predict", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _wait_hash(addr: str, want: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, body = get(addr, "/model")
        if status == 200 and body["model_hash"] == want:
            return body
        time.sleep(0.2)
    raise AssertionError(f"never served {want[:12]}; last {body}")


@pytest.mark.slow
def test_edge_node_serves_the_latest_verified_model(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    data = tmp_path / "node"
    data.mkdir()
    args = ["--data-dir", str(data), "--profile", "edge", "--health-listen", "127.0.0.1:0"]
    args += ["--serve-model", str(ckpts), "--serve-listen", "127.0.0.1:0"]
    procs.append(shoal("node", "start", *args, log=tmp_path / "node.log"))
    health = wait_addr(data, procs[0])
    status, body = get(health, "/readyz")
    assert (status, body["stage"]) == (503, "waiting-for-verified-model")
    serve = json.loads((data / "serve.json").read_text())["addr"]
    status, err = _predict(serve, {"prompt": "import "})
    assert status == 503 and "no verified model yet" in err["error"]

    # The default factory is the demo GPT; a checkpoint of it appears: now ready.
    h1 = _save(ckpts / "round1.safetensors", GPT(GPTConfig()), 1)
    wait_status(health, "/readyz", 200, 30)
    _wait_hash(serve, h1)
    status, out = _predict(serve, {"prompt": "import ", "tokens": 8})
    assert status == 200 and out["model_hash"] == h1 and out["round"] == 1
    assert len(out["next_token_top"]) == 5

    # A newer but corrupt checkpoint is not served; a newer valid one is.
    _save(ckpts / "round2.safetensors", GPT(GPTConfig(), seed=2), 2)
    _flip_byte(ckpts / "round2.safetensors")
    time.sleep(6)  # longer than one rescan
    assert get(serve, "/model")[1]["model_hash"] == h1
    h3 = _save(ckpts / "round3.safetensors", GPT(GPTConfig(), seed=3), 3)
    _wait_hash(serve, h3)
    status, out = _predict(serve, {"prompt": "import ", "tokens": 8})
    assert status == 200 and out["model_hash"] == h3
    log = (tmp_path / "node.log").read_text()
    assert "skipping unverified checkpoint" in log


@pytest.mark.slow
def test_edge_node_follows_a_training_run(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """An inference-only node serves the swarm's current model, bit for bit."""
    demo = DemoConfig(nodes=2, rounds=4, inner_steps=8, out=tmp_path, deadline_s=8)
    cfgs = [node_config(demo, 0, [])]
    procs.append(start_node(cfgs[0]))
    boot = wait_contact(cfgs[0].data_dir, procs[0])
    cfgs.append(node_config(demo, 1, [boot]))
    procs.append(start_node(cfgs[1]))

    data = tmp_path / "edge"
    data.mkdir()
    args = ["--data-dir", str(data), "--profile", "edge", "--bootstrap", boot]
    args += ["--follow-run", "demo", "--serve-listen", "127.0.0.1:0"]
    procs.append(shoal("node", "start", *args, "--health-listen", "127.0.0.1:0",
                       log=tmp_path / "edge.log"))  # fmt: skip
    health = wait_addr(data, procs[2])
    serve = json.loads((data / "serve.json").read_text())["addr"]
    served: dict[int, str] = {}
    deadline = time.monotonic() + 240
    while procs[0].poll() is None and time.monotonic() < deadline:
        status, body = get(serve, "/model")
        if status == 200:
            served[body["round"]] = body["model_hash"]
        time.sleep(0.5)
    assert procs[0].wait(timeout=120) == 0 and procs[1].wait(timeout=120) == 0
    assert get(health, "/readyz")[0] == 200
    status, out = _predict(serve, {"prompt": "def ", "tokens": 4})
    assert status == 200 and out["round"] == max(served)
    trained = {
        h["round"]: h["model_hash"]
        for c in cfgs
        for h in json.loads(c.result_file.read_text())["history"]  # type: ignore[union-attr]
    }
    # it served real rounds of the run (round 0 is the untrained start), each exactly
    # the model the trainers ended that round with
    assert any(r >= 1 for r in served), served
    for rnd, h in served.items():
        if rnd >= 1:
            assert trained[rnd] == h, (rnd, h, trained)
