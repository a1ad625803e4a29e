"""Training in one process: a single-node baseline, and DiLoCo with N replicas in turn.

`simulate_diloco_inprocess` is the reference for the networked version: same data
shards, same math (`diloco_math`), same codec with error feedback, but the "network"
is a list. Given the same arguments the networked run must reach the same model hash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from shoal.compression import ErrorFeedback, get_codec
from shoal.training.data import Corpus, stdlib_corpus
from shoal.training.diloco_math import (
    OuterOptimizer,
    flatten_params,
    model_hash,
    pseudo_gradient,
    unflatten_into,
    validate_update,
    weighted_average,
)
from shoal.training.model import GPT, GPTConfig, evaluate

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    initial_loss: float
    final_loss: float
    history: list[tuple[int, float]] = field(default_factory=list)  # (inner steps, loss)
    model_hash: str = ""
    bytes_sent: int = 0  # per peer, all rounds (DiLoCo only)
    bytes_fp32: int = 0  # what bytes_sent would be uncompressed


def _inner_optimizer(model: GPT, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)


def train_single_node(
    steps: int,
    *,
    config: GPTConfig | None = None,
    corpus: Corpus | None = None,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    eval_every: int = 0,
    eval_batches: int = 8,
) -> TrainResult:
    """Plain AdamW for `steps` steps on the whole training split: the baseline."""
    config = config or GPTConfig()
    corpus = corpus or stdlib_corpus()
    model = GPT(config, seed=seed)
    opt = _inner_optimizer(model, lr)
    batches = corpus.batches("train", batch_size, config.block_size, seed=seed)
    initial = evaluate(model, corpus, eval_batches)
    result = TrainResult(initial, initial, [(0, initial)])
    for step in range(1, steps + 1):
        x, y = next(batches)
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (eval_every and step % eval_every == 0) or step == steps:
            held = evaluate(model, corpus, eval_batches)
            result.history.append((step, held))
            log.info("single step %d: train %.3f held-out %.3f", step, loss.item(), held)
    result.final_loss = result.history[-1][1]
    result.model_hash = model_hash(flatten_params(model.parameters()))
    return result


def simulate_diloco_inprocess(
    n_peers: int,
    rounds: int,
    inner_steps: int,
    *,
    config: GPTConfig | None = None,
    corpus: Corpus | None = None,
    batch_size: int = 32,
    inner_lr: float = 3e-3,
    outer_lr: float = 0.7,
    outer_momentum: float = 0.9,
    codec: str = "int8",
    seed: int = 0,
    eval_batches: int = 8,
) -> TrainResult:
    """DiLoCo with `n_peers` replicas run one after another in this process.

    Each peer keeps its own model copy, AdamW state, data shard (rank, n_peers) and
    error-feedback residual across rounds; all share one global flat buffer and one
    outer optimizer, which every networked peer would hold an identical copy of.
    """
    if n_peers < 1 or rounds < 1 or inner_steps < 1:
        raise ValueError("n_peers, rounds and inner_steps must be >= 1")
    config = config or GPTConfig()
    corpus = corpus or stdlib_corpus()
    models = [GPT(config, seed=seed) for _ in range(n_peers)]  # same seed: same init
    global_flat = flatten_params(models[0].parameters())
    numel = global_flat.numel()
    outer = OuterOptimizer(lr=outer_lr, momentum=outer_momentum)
    inner_opts = [_inner_optimizer(m, inner_lr) for m in models]
    feedback = [ErrorFeedback(get_codec(codec)) for _ in range(n_peers)]
    streams = [
        corpus.batches("train", batch_size, config.block_size, seed=seed, shard=(r, n_peers))
        for r in range(n_peers)
    ]
    receiver = get_codec(codec)
    initial = evaluate(models[0], corpus, eval_batches)
    result = TrainResult(initial, initial, [(0, initial)])
    for rnd in range(rounds):
        received = []
        for model, opt, stream, ef in zip(models, inner_opts, streams, feedback, strict=True):
            unflatten_into(global_flat, model.parameters())
            for _ in range(inner_steps):
                x, y = next(stream)
                loss = model(x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            delta = pseudo_gradient(global_flat, flatten_params(model.parameters()))
            encoded = ef.encode("params", delta)  # what would go on the wire
            result.bytes_sent += encoded.nbytes
            result.bytes_fp32 += 4 * numel
            received.append((encoded, inner_steps * batch_size))
        # Receiver side, in peer order (the networked version sorts by peer id).
        updates = []
        for encoded, samples in received:
            update = receiver.decode(encoded)
            validate_update(update, numel, model_version=rnd, update_version=rnd)
            updates.append((update, samples))
        outer.step(global_flat, weighted_average(updates))
        unflatten_into(global_flat, models[0].parameters())
        held = evaluate(models[0], corpus, eval_batches)
        result.history.append(((rnd + 1) * inner_steps, held))
        log.info(
            "diloco round %d: held-out %.3f hash %s", rnd + 1, held, model_hash(global_flat)[:12]
        )
    result.final_loss = result.history[-1][1]
    result.model_hash = model_hash(global_flat)
    return result


def main() -> None:
    """Compare DiLoCo (4 peers, int8 + error feedback) to one node with the same steps."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--inner-steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--codec", default="int8")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    corpus = stdlib_corpus()
    steps = args.rounds * args.inner_steps
    single = train_single_node(
        steps, corpus=corpus, batch_size=args.batch_size, eval_every=args.inner_steps
    )
    diloco = simulate_diloco_inprocess(
        args.peers, args.rounds, args.inner_steps,
        corpus=corpus, batch_size=args.batch_size, codec=args.codec,
    )  # fmt: skip
    sent_mb = diloco.bytes_sent / args.peers / 1e6
    fp32_mb = diloco.bytes_fp32 / args.peers / 1e6
    log.info("held-out loss after %d steps per node (initial %.4f):", steps, single.initial_loss)
    log.info("  single node          %.4f", single.final_loss)
    log.info("  DiLoCo x%d, %-5s     %.4f", args.peers, args.codec, diloco.final_loss)
    log.info("  sent %.2f MB per peer (fp32 would be %.2f MB)", sent_mb, fp32_mb)


if __name__ == "__main__":
    main()
