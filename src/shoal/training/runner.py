"""``shoal train``: one node joins a run and trains with the swarm, top to bottom.

1. start the node (P2P + the run's round core) in a background thread;
2. build the model from the config and wrap its AdamW in ``DiLoCo`` (which downloads
   the current state from peers when the run is already going);
3. train on this peer's data shard until the run's last round;
4. save the final checkpoint and a result JSON, stop the node.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import torch

from shoal.diloco import DiLoCo
from shoal.ledger.messages import LEDGER_MESSAGES
from shoal.privacy.dp_sgd import PrivateInner, private_inner_loop
from shoal.rounds.config import RoundConfig
from shoal.runtime.background import NodeThread
from shoal.runtime.health import HealthServer, Readiness, start_in_thread
from shoal.runtime.node import Node, NodeConfig
from shoal.training.data import Corpus, stdlib_corpus, text_corpus
from shoal.training.run_config import RunConfig
from shoal.training.state_sync import STATE_MESSAGES
from shoal.wire.contact import Contact, split_addr

log = logging.getLogger(__name__)

# Wait this long for the expected peers before training starts anyway.
PEER_WAIT_S = 30.0


def load_corpus(cfg: RunConfig) -> Corpus:
    return stdlib_corpus() if cfg.data_path == "stdlib" else text_corpus(cfg.data_path)


def round_config(cfg: RunConfig) -> RoundConfig:
    # Loopback-friendly timings; a WAN run would raise them via the deadline.
    return RoundConfig(
        target_samples=cfg.effective_target,
        deadline_s=cfg.deadline_s,
        group_size=cfg.group_size,
        join_window_s=1.5,
        poll_interval_s=cfg.progress_interval_s,
        min_poll_interval_s=0.25,
        publish_interval_s=cfg.progress_interval_s,
        group_timeout_s=4.0,
        final_poll_timeout_s=2.0,
    )


def run_training(cfg: RunConfig, health_listen: str | None = None) -> dict[str, Any]:
    host, port = split_addr(cfg.listen)
    node_cfg = NodeConfig(
        data_dir=cfg.data_dir,
        listen_host=host,
        listen_port=port,
        bootstrap=[Contact.parse(b) for b in cfg.bootstrap],
        run=cfg.name,
        rounds=round_config(cfg),
        extra_messages=STATE_MESSAGES + LEDGER_MESSAGES,
    )
    thread = NodeThread(node_cfg)
    node = thread.start()
    # /readyz stays 503 until the node has peers and the run's state (see health.py).
    readiness = Readiness("joining")
    health: HealthServer | None = None
    progress = open(cfg.progress_file, "a") if cfg.progress_file else None  # noqa: SIM115
    try:
        if health_listen is not None:
            health = start_in_thread(thread, readiness, health_listen)
        _prewarm_ledger(cfg)
        _wait_for_peers(thread, cfg)
        readiness.set(False, "syncing")
        model = cfg.build_model()
        corpus = load_corpus(cfg)
        inner: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.inner_lr, weight_decay=cfg.inner_weight_decay
        )
        # [privacy] DP-SGD: Opacus wraps the optimizer and samples the batches (Poisson);
        # DiLoCo still gets the plain model (its params, names and hashes).
        private = _private_inner(cfg, model, inner, corpus)
        forward = private.model if private is not None else model
        inner = private.optimizer if private is not None else inner
        ledger = _ledger_hook(cfg, thread)
        opt = DiLoCo(
            model, inner, run=cfg.name, node=thread, inner_steps=cfg.inner_steps,
            outer_lr=cfg.outer_lr, outer_momentum=cfg.outer_momentum,
            compression=cfg.compression, allreduce_timeout_s=max(30.0, cfg.deadline_s),
            overlap=cfg.overlap, aggregator=cfg.aggregator,
            secure_aggregation=cfg.secure_aggregation, dp=cfg.dp,
            ledger=ledger,
        )  # fmt: skip
        first_round = opt.round
        readiness.set(True, "training", round=opt.round, **_privacy_gauges(opt, private))
        batches = corpus.batches(
            "train", cfg.batch_size, cfg.block_size, seed=cfg.seed, shard=(cfg.rank, cfg.world)
        )
        if private is not None:
            batches = private.batches
        t0, cpu0 = time.monotonic(), time.process_time()
        while opt.round < cfg.rounds:
            x, y = next(batches)
            loss = forward(x, y)
            opt.zero_grad()
            loss.backward()
            done = opt.step(samples=len(x))
            if opt.pending_round == cfg.rounds - 1:  # overlap: no round after the last
                done = opt.flush()
            if done is not None:
                readiness.set(True, "training", round=opt.round, **_privacy_gauges(opt, private))
                if private is not None:
                    log.info("DP-SGD: epsilon %.4f (delta %g) after %d inner steps",
                             private.epsilon(), private.settings.delta, private.steps)  # fmt: skip
            if progress is not None and (opt.local_steps % 5 == 0 or done is not None):
                line = {"step": opt.local_steps, "round": opt.round, "loss": loss.item()}
                progress.write(json.dumps(line) + "\n")
                progress.flush()
        # stay until the live peers agree on the final state (a straggler adopts it)
        converged = opt.converge()
        ckpt_dir = cfg.data_dir / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        final_hash = opt.save_checkpoint(ckpt_dir / f"round{opt.round}.safetensors")
        # the model to use (the outer iterate), beside the state to resume from
        model_file = ckpt_dir / f"model-round{opt.round}.safetensors"
        readout_hash = opt.save_model(model_file)
        result = {
            "peer_id": str(node.peer_id),
            "first_round": first_round,
            "rounds": opt.round,
            "local_steps": opt.local_steps,
            "final_model_hash": final_hash,
            "converged": converged,
            "checkpoint": str(ckpt_dir / f"round{opt.round}.safetensors"),
            "model": str(model_file),
            "model_hash": readout_hash,
            "history": [h.__dict__ for h in opt.history],
            "bytes_sent": node.transport.bytes_sent,
            "bytes_received": node.transport.bytes_received,
            "bytes_sent_by_kind": node.transport.bytes_sent_by_kind,
            "numel": int(opt.global_flat.numel()),
            "wall_s": round(time.monotonic() - t0, 2),
            "cpu_s": round(time.process_time() - cpu0, 2),  # all threads, training loop only
            "sync_s": round(opt.sync_s, 3),
            "sync_breakdown": {k: round(v, 3) for k, v in opt.timings.items()},
            "ledger": ledger.stats() if ledger is not None else None,
            "privacy": _privacy_report(opt, private),
        }
        if result["privacy"] is not None:
            log.info("privacy spent: %s", json.dumps(result["privacy"]))
        if ledger is not None:  # the swarm's last entries reach every peer before we stop
            ledger.settle(cfg.rounds - 1)  # (after wall_s: training time, not this wait)
            result["ledger"] = ledger.stats()
        if cfg.result_file is not None:
            tmp = Path(str(cfg.result_file) + ".tmp")
            tmp.write_text(json.dumps(result))
            tmp.replace(cfg.result_file)
        return result
    finally:
        if progress is not None:
            progress.close()
        if health is not None:
            health.close_in(thread)
        thread.stop()


def _private_inner(
    cfg: RunConfig, model: torch.nn.Module, inner: torch.optim.Optimizer, corpus: Corpus
) -> PrivateInner | None:
    """The DP-SGD inner loop when ``[privacy]`` asks for one (Opacus only then)."""
    settings = cfg.dp_sgd
    if settings is None:
        return None
    return private_inner_loop(
        model, inner, corpus, settings, batch_size=cfg.batch_size, block_size=cfg.block_size,
        shard=(cfg.rank, cfg.world),
    )  # fmt: skip


def _privacy_report(opt: DiLoCo, private: PrivateInner | None) -> dict[str, Any] | None:
    """The result JSON's ``privacy``: epsilon of the released updates and of DP-SGD."""
    if opt.dp is None and private is None:
        return None
    report: dict[str, Any] = opt.dp.report() if opt.dp is not None else {"epsilon": None}
    report["dp_sgd"] = private.report() if private is not None else None
    return report


def _privacy_gauges(opt: DiLoCo, private: PrivateInner | None) -> dict[str, float]:
    """Readiness details that /metrics exports as gauges (health.py)."""
    out: dict[str, float] = {}
    if opt.dp is not None:
        out["dp_epsilon"], out["dp_delta"] = opt.dp.epsilon_spent(), opt.dp.delta
    if private is not None:
        out["dp_sgd_epsilon"] = private.epsilon()
    return out


def _prewarm_ledger(cfg: RunConfig) -> None:
    """Import the ledger (web3 & co.: seconds of CPU, tens on a loaded machine) while
    we wait for peers, not after: a peer that starts late trains its first rounds alone."""
    if (cfg.data_dir / "ledger" / "chain.json").exists():
        threading.Thread(target=importlib.import_module, args=("shoal.ledger.training_hook",),
                         name="ledger-import", daemon=True).start()  # fmt: skip


def _ledger_hook(cfg: RunConfig, thread: NodeThread) -> Any:
    """The ledger hook when the data dir was set up for one (ledger/chain.json)."""
    if not (cfg.data_dir / "ledger" / "chain.json").exists():
        return None
    from shoal.ledger.training_hook import hook_for  # web3 & co. only when used

    return hook_for(cfg.data_dir, cfg.name, thread)


async def _alive(node: Node) -> int:
    return sum(p["state"] == "alive" for p in node.peers())


def _wait_for_peers(thread: NodeThread, cfg: RunConfig) -> None:
    assert thread.node is not None
    node = thread.node
    deadline = time.monotonic() + PEER_WAIT_S
    while time.monotonic() < deadline:
        if thread.call(_alive(node)) >= cfg.expected_peers - 1:
            return
        time.sleep(0.2)
    log.info("starting with fewer peers than expected")
