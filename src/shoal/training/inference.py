"""Inference-only serving of the latest verified model (the edge profile's mode).

Two sources, newest round wins. Following a run (``--follow-run``), the node reads the
run's heads from the DHT and downloads the state most publishers agree on at the top
round, checking its SHA-256 (``state_sync.fetch_state``, the joiners' path), so it
serves what the swarm is training now without taking part. And/or it watches a
checkpoint directory (where ``shoal train`` writes, or a volume a training pod
shares) and serves the newest checkpoint that passes verification:
every candidate is ordered by the round in its metadata, then fully loaded with
``load_checkpoint``, which checks the checkpoint hash and the model hash. A corrupt or
tampered file is skipped with a warning and the previous model keeps serving.

``POST /predict`` with ``{"prompt": "...", "tokens": N}`` returns the greedy
continuation of the prompt and the top next-token candidates, plus the round and
model hash that produced them. The model is the byte-level LM of the run (the
factory's ``model(idx)`` returns logits), so prompts are UTF-8 bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from shoal.runtime.http import HttpError, Request, Response
from shoal.runtime.node import Node
from shoal.training.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from shoal.training.diloco_math import model_hash, unflatten_into
from shoal.training.state_sync import fetch_state, read_heads

log = logging.getLogger(__name__)

# Generated tokens per request: enough for a completion, bounded so one request
# cannot keep a small device busy for minutes.
MAX_NEW_TOKENS = 256
MAX_PROMPT_BYTES = 4096
TOP_K = 5
# How often the directory is rescanned for a newer checkpoint.
RELOAD_INTERVAL_S = 5.0
CHECKPOINT_SUFFIX = ".safetensors"
# How long one refresh waits for the run's heads to appear in the DHT.
SWARM_FETCH_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class Served:
    path: Path
    round: int
    model_hash: str
    model: torch.nn.Module


def _claim(path: Path) -> tuple[int, bool]:
    """The round a checkpoint's metadata claims, and whether it is a run's readout
    (`DiLoCo.save_model`: the model to use, where a state checkpoint holds the
    look-ahead params). Cheap: reads the header only; the file is verified later."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return int(meta.get("round", -1)), meta.get("extra.kind") == "readout"
    except (SafetensorError, OSError, ValueError, UnicodeDecodeError):
        return -1, False


def latest_verified(directory: Path) -> tuple[Path, Checkpoint] | None:
    """The highest-round checkpoint in ``directory`` that verifies, or None; of one
    round, a readout before the state it was read out of."""
    try:
        files = [p for p in directory.iterdir() if p.name.endswith(CHECKPOINT_SUFFIX)]
    except OSError as exc:
        log.warning("cannot list %s: %s", directory, exc)
        return None
    for path in sorted(files, key=lambda p: (*_claim(p), p.name), reverse=True):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping unverified checkpoint: %s", exc)
    return None


class ModelServer:
    """Holds the served model; ``refresh`` swaps in a newer verified one."""

    def __init__(
        self,
        directory: Path | None,
        factory: Callable[[], torch.nn.Module],
        follow: tuple[Node, str] | None = None,
    ) -> None:
        self.directory = directory
        self.factory = factory
        self.follow = follow
        self.served: Served | None = None
        # One generation at a time: a small device has one core to give.
        self._busy = asyncio.Lock()

    def refresh(self) -> bool:
        """Load the newest verified checkpoint if it is newer than the served one."""
        if self.directory is None:
            return False
        found = latest_verified(self.directory)
        if found is None:
            return False
        path, ckpt = found
        cur = self.served
        if cur is not None and (ckpt.round, ckpt.model_hash) == (cur.round, cur.model_hash):
            return False
        if cur is not None and ckpt.round < cur.round:
            return False
        model = self.factory()
        try:
            missing, unexpected = model.load_state_dict(ckpt.params, strict=False)
        except RuntimeError as exc:  # shapes differ: another architecture
            log.warning("%s does not fit the model: %s", path, str(exc)[:300])
            return False
        # Tied weights appear once in the checkpoint; anything else missing is a mismatch.
        real_missing = [k for k in missing if not _is_tied(model, k)]
        if real_missing or unexpected:
            log.warning(
                "%s does not fit the model (missing %s, unexpected %s)",
                path,
                real_missing[:3],
                unexpected[:3],
            )
            return False
        model.eval()
        self.served = Served(path, ckpt.round, ckpt.model_hash, model)
        log.info("serving %s (round %d, model %s)", path.name, ckpt.round, ckpt.model_hash[:12])
        return True

    async def refresh_from_swarm(self) -> bool:
        """Serve the followed run's current state if the swarm is past our round."""
        if self.follow is None:
            return False
        node, run = self.follow
        heads = await read_heads(node, run)
        served_round = self.served.round if self.served is not None else -1
        if not heads or max(r for _, r, _ in heads) <= served_round:
            return False
        model = await asyncio.to_thread(self.factory)
        params = [p for p in model.parameters() if p.requires_grad]
        numel = sum(p.numel() for p in params)
        try:
            # params then outer momentum, fp32: the layout DiLoCo publishes
            snap = await fetch_state(node, run, 2 * 4 * numel, wait_s=SWARM_FETCH_WAIT_S)
        except RuntimeError as exc:  # no publisher answered with the agreed state
            log.warning("could not fetch run %s's state: %s", run, exc)
            return False
        if snap is None or snap.round <= served_round:
            return False
        with torch.no_grad():
            flat = torch.frombuffer(bytearray(snap.data[: 4 * numel]), dtype=torch.float32)
            unflatten_into(flat, params)
        named = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        h = model_hash(named)
        model.eval()
        self.served = Served(Path(f"swarm:{run}"), snap.round, h, model)
        log.info("serving run %s's state at round %d (model %s)", run, snap.round, h[:12])
        return True

    def describe(self) -> str:
        where = [str(self.directory)] if self.directory is not None else []
        if self.follow is not None:
            where.append(f"run {self.follow[1]}")
        return " or ".join(where)

    async def watch(self) -> None:
        while True:
            await asyncio.to_thread(self.refresh)
            try:
                await self.refresh_from_swarm()
            except (TimeoutError, OSError) as exc:  # DHT lookups time out under churn
                log.warning("following the swarm: %s", exc)
            await asyncio.sleep(RELOAD_INTERVAL_S)

    async def handle_predict(self, req: Request) -> Response:
        if req.method != "POST":
            return Response.text(405, "POST a JSON body\n")
        prompt, tokens = _parse_predict(req.body)
        served = self.served
        if served is None:
            return Response.json(503, {"error": f"no verified model yet from {self.describe()}"})
        async with self._busy:
            out = await asyncio.to_thread(generate, served.model, prompt, tokens)
        return Response.json(200, {**out, "round": served.round, "model_hash": served.model_hash})

    async def handle_model(self, req: Request) -> Response:
        s = self.served
        if s is None:
            return Response.json(503, {"error": f"no verified model yet from {self.describe()}"})
        return Response.json(
            200, {"path": str(s.path), "round": s.round, "model_hash": s.model_hash}
        )


def _is_tied(model: torch.nn.Module, name: str) -> bool:
    # parameters() dedups tied tensors, named_parameters() reports the first name only.
    return name not in dict(model.named_parameters())


def _parse_predict(body: bytes) -> tuple[bytes, int]:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "body is not JSON") from None
    if not isinstance(obj, dict):
        raise HttpError(422, "body must be a JSON object")
    prompt = obj.get("prompt")
    tokens = obj.get("tokens", 32)
    if not isinstance(prompt, str) or not prompt:
        raise HttpError(422, "prompt must be a non-empty string")
    raw = prompt.encode()
    if len(raw) > MAX_PROMPT_BYTES:
        raise HttpError(413, f"prompt over {MAX_PROMPT_BYTES} bytes")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens <= MAX_NEW_TOKENS:
        raise HttpError(422, f"tokens must be an integer in [0, {MAX_NEW_TOKENS}]")
    return raw, tokens


@torch.no_grad()
def generate(model: torch.nn.Module, prompt: bytes, tokens: int) -> dict[str, Any]:
    """Greedy byte-level continuation and the top next-byte candidates after the prompt."""
    block = int(getattr(getattr(model, "cfg", None), "block_size", 64))
    idx = torch.tensor([list(prompt)], dtype=torch.long)
    logits = model(idx[:, -block:])[0, -1]
    probs = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, TOP_K)
    candidates = [
        [bytes([int(i)]).decode("latin-1"), round(float(p), 4)]
        for p, i in zip(top.values, top.indices, strict=True)
    ]
    out: list[int] = []
    for _ in range(tokens):
        nxt = int(torch.argmax(logits))
        out.append(nxt)
        idx = torch.cat([idx, torch.tensor([[nxt]])], dim=1)
        logits = model(idx[:, -block:])[0, -1]
    return {
        "completion": bytes(out).decode("utf-8", errors="replace"),
        "next_token_top": candidates,
    }
