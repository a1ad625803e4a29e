"""Training in one process: a single-node baseline, and DiLoCo with N replicas in turn.

`simulate_diloco_inprocess` is the reference for the networked version: same data
shards, same math (`diloco_math`), same codec with error feedback and the owners'
re-encode of the average, but the "network" is a list. The networked run sums in
another fp32 order, so its bits, not its math, can differ.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from shoal.compression import ErrorFeedback, entropy, get_codec
from shoal.training.data import SHARD_STRIPE_BYTES, Corpus, stdlib_corpus
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
    model: GPT | None = None  # the trained model (single node only)
    # DiLoCo only: the loss of the outer optimizer's readout (its iterate, not the
    # look-ahead params the peers train from), what a run hands its users
    readout_loss: float | None = None


# "striped": what real nodes do (`Corpus.batches(shard=(rank, world))`: interleaved
# stripes, so every peer sees all parts of the corpus). Ablations: "contiguous", one
# slice per peer (on the sorted stdlib corpus: different packages per peer, what nodes
# did before), and "iid", every peer samples the whole split with its own stream.
ShardMode = Literal["striped", "contiguous", "iid"]
OverlapMode = Literal["off", "delayed", "eager"]
# Cap on the norm-matching factor (`rescale_outer`): sqrt(n) is what n orthogonal,
# equal-norm pseudo-gradients give; more would amplify replicas that disagree.
MAX_RESCALE_FACTOR_PER_SQRT_PEER = 1.0


def _inner_optimizer(model: GPT, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


LrSchedule = Literal["constant", "cosine"]


def scheduled_lr(lr: float, schedule: LrSchedule, step: int, total: int) -> float:
    """The inner lr for local step ``step`` (0-based) of ``total``: constant, or a
    cosine from ``lr`` down to a tenth of it."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total))))
    raise ValueError(f"lr schedule must be 'constant' or 'cosine', not {schedule!r}")


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _peer_stream(
    corpus: Corpus, batch_size: int, block_size: int, seed: int, rank: int, world: int,
    shard_mode: ShardMode,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    if shard_mode in ("striped", "contiguous"):
        stripes = SHARD_STRIPE_BYTES if shard_mode == "striped" else None
        shard = (rank, world)
        return corpus.batches("train", batch_size, block_size, seed, shard, stripes)
    if shard_mode == "iid":
        # Own seed per peer, whole split: streams differ, distributions do not.
        return corpus.batches("train", batch_size, block_size, seed=seed * 1_000_003 + rank + 1)
    raise ValueError(f"shard_mode must be 'striped', 'contiguous' or 'iid', not {shard_mode!r}")


@torch.no_grad()
def _average_adam_state(opts: list[torch.optim.Optimizer]) -> None:
    """Set every replica's AdamW moments to their mean (an ablation; not sent by nodes)."""
    for group in zip(*(o.param_groups for o in opts), strict=True):
        for params in zip(*(g["params"] for g in group), strict=True):
            states = [o.state[p] for o, p in zip(opts, params, strict=True) if p in o.state]
            if len(states) != len(opts):
                continue
            for key in ("exp_avg", "exp_avg_sq"):
                mean = torch.stack([s[key] for s in states]).mean(0)
                for s in states:
                    s[key].copy_(mean)


def _norm_matched(average: torch.Tensor, deltas: list[torch.Tensor]) -> torch.Tensor:
    """`average` scaled to the mean norm of the replicas' own pseudo-gradients.

    Averaging cancels the coordinates where replicas disagree, so the mean step is
    shorter than any replica's; this restores the length, keeping the direction.
    """
    avg_norm = float(average.norm())
    if avg_norm == 0.0:
        return average
    mean_norm = sum(float(d.norm()) for d in deltas) / len(deltas)
    cap = MAX_RESCALE_FACTOR_PER_SQRT_PEER * math.sqrt(len(deltas))
    return average * min(cap, mean_norm / avg_norm)


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
    init: Mapping[str, torch.Tensor] | None = None,
    lr_schedule: LrSchedule = "constant",
    stream_seed: int | None = None,
    weight_decay: float = 0.1,
) -> TrainResult:
    """Plain AdamW for `steps` steps on the whole training split: the baseline.
    ``init``: a state dict to start from instead of the seed's fresh model;
    ``stream_seed``: the batches' seed, if not ``seed``."""
    config = config or GPTConfig()
    corpus = corpus or stdlib_corpus()
    model = GPT(config, seed=seed)
    if init is not None:
        model.load_state_dict(init)
    opt = _inner_optimizer(model, lr, weight_decay)
    stream = seed if stream_seed is None else stream_seed
    batches = corpus.batches("train", batch_size, config.block_size, seed=stream)
    initial = evaluate(model, corpus, eval_batches)
    result = TrainResult(initial, initial, [(0, initial)])
    for step in range(1, steps + 1):
        if lr_schedule != "constant":
            _set_lr(opt, scheduled_lr(lr, lr_schedule, step - 1, steps))
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
    result.model = model
    return result


def pretrain_single_node(steps: int, *, seed: int = 0, stream_seed: int = 12345) -> GPT:
    """The seed's fresh demo model after ``steps`` AdamW steps (batch 16, lr 3e-3) on
    one node: a shared starting point for comparisons (the DiLoCo paper starts from a
    pretrained model). ``stream_seed``: its batches differ from any run's seed-0 ones."""
    res = train_single_node(steps, batch_size=16, seed=seed, stream_seed=stream_seed)
    assert res.model is not None
    return res.model


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
    outer_nesterov: bool = True,
    codec: str = "int8",
    seed: int = 0,
    eval_batches: int = 8,
    shard_mode: ShardMode = "striped",
    average_inner_state: bool = False,
    rescale_outer: bool = False,
    overlap: OverlapMode = "off",
    init: Mapping[str, torch.Tensor] | None = None,
    lr_schedule: LrSchedule = "constant",
    result_feedback: bool = False,
    inner_weight_decay: float = 0.1,
) -> TrainResult:
    """DiLoCo with `n_peers` replicas run one after another in this process.

    Each peer keeps its own model copy, AdamW state, data shard (rank, n_peers) and
    error-feedback residual across rounds; all share one global flat buffer and one
    outer optimizer, which every networked peer would hold an identical copy of.

    The defaults are what the nodes do. Ablations (docs/BENCHMARKS.md, "DiLoCo outer
    optimizer in short runs"): `shard_mode` ("contiguous" slices, or "iid": peers
    sample the whole split),
    `average_inner_state` (AdamW moments averaged each round), `rescale_outer`
    (the average stretched to the replicas' mean pseudo-gradient norm).
    `overlap`: "delayed" is what ``DiLoCo(overlap=True)`` did first: round r's
    average lands at the close of round r+1 and each peer restarts from the new global
    params, dropping its own progress of r+1 until that round's average lands;
    "eager" lands the same average but keeps the peer's own r+1 progress on top of
    the new global params (the global params, and so every outer step, are the same).
    `result_feedback`: the shard owners keep what re-encoding the average dropped and
    add it to the next round's average before they encode it (error feedback on the
    result as on the contributions; the owners are fixed in one group).
    """
    if n_peers < 1 or rounds < 1 or inner_steps < 1:
        raise ValueError("n_peers, rounds and inner_steps must be >= 1")
    config = config or GPTConfig()
    corpus = corpus or stdlib_corpus()
    models = [GPT(config, seed=seed) for _ in range(n_peers)]  # same seed: same init
    if init is not None:  # e.g. a checkpoint pretrained on one node
        for m in models:
            m.load_state_dict(init)
    global_flat = flatten_params(models[0].parameters())
    numel = global_flat.numel()
    outer = OuterOptimizer(lr=outer_lr, momentum=outer_momentum, nesterov=outer_nesterov)
    inner_opts = [_inner_optimizer(m, inner_lr, inner_weight_decay) for m in models]
    feedback = [ErrorFeedback(get_codec(codec)) for _ in range(n_peers)]
    streams = [
        _peer_stream(corpus, batch_size, config.block_size, seed, r, n_peers, shard_mode)
        for r in range(n_peers)
    ]
    receiver = get_codec(codec)
    initial = evaluate(models[0], corpus, eval_batches)
    result = TrainResult(initial, initial, [(0, initial)])
    # overlap: each peer's round start (its own params), and the average still to land
    starts = [global_flat.clone() for _ in models]
    pending: torch.Tensor | None = None
    owners = ErrorFeedback(receiver)
    for rnd in range(rounds):
        received = []
        for i, (model, opt, stream, ef) in enumerate(
            zip(models, inner_opts, streams, feedback, strict=True)
        ):
            if overlap == "off":
                unflatten_into(global_flat, model.parameters())
            for k in range(inner_steps):
                if lr_schedule != "constant":
                    step = rnd * inner_steps + k
                    _set_lr(opt, scheduled_lr(inner_lr, lr_schedule, step, rounds * inner_steps))
                x, y = next(stream)
                loss = model(x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            start = global_flat if overlap == "off" else starts[i]
            delta = pseudo_gradient(start, flatten_params(model.parameters()))
            encoded = ef.encode("params", delta)  # what would go on the wire
            wire = entropy.pack(encoded.payload) if ef.codec.entropy_coded else encoded.payload
            result.bytes_sent += memoryview(wire).nbytes
            result.bytes_fp32 += 4 * numel
            received.append((encoded, inner_steps * batch_size))
        # Receiver side, in peer order (the networked version sorts by peer id).
        updates = []
        for encoded, samples in received:
            update = receiver.decode(encoded)
            validate_update(update, numel, model_version=rnd, update_version=rnd)
            updates.append((update, samples))
        average = weighted_average(updates)
        if codec != "none":
            # Each shard owner re-encodes the mean it sends back. Shards sit on the
            # codec's chunk grid, so that is the whole average re-encoded at once.
            enc = owners.encode("average", average) if result_feedback else receiver.encode(average)
            average = receiver.decode(enc).reshape(-1)
        if rescale_outer:
            average = _norm_matched(average, [u for u, _ in updates])
        if average_inner_state:
            _average_adam_state(inner_opts)
        if overlap == "off":
            outer.step(global_flat, average)
        else:
            _land_overlapped(models, starts, global_flat, outer, pending, overlap)
            pending = average
            if rnd == rounds - 1:  # the flush: the last average has no round to hide behind
                outer.step(global_flat, pending)
        held = _evaluate_global(models[0], global_flat, corpus, eval_batches)
        result.history.append(((rnd + 1) * inner_steps, held))
        log.info(
            "diloco round %d: held-out %.3f hash %s", rnd + 1, held, model_hash(global_flat)[:12]
        )
    result.final_loss = result.history[-1][1]
    result.model_hash = model_hash(global_flat)
    readout = outer.readout(global_flat)
    result.readout_loss = (
        result.final_loss
        if torch.equal(readout, global_flat)
        else _evaluate_global(models[0], readout, corpus, eval_batches)
    )
    return result


def _land_overlapped(
    models: list[GPT],
    starts: list[torch.Tensor],
    global_flat: torch.Tensor,
    outer: OuterOptimizer,
    pending: torch.Tensor | None,
    mode: OverlapMode,
) -> None:
    """Overlap, at the close of a round: apply the previous round's average and set
    where each peer goes on from (see simulate_diloco_inprocess)."""
    if pending is not None:
        outer.step(global_flat, pending)
    for i, model in enumerate(models):
        local = flatten_params(model.parameters())
        if pending is None:  # first round: nothing to land, keep training from here
            starts[i] = local
            continue
        progress = local - starts[i]
        starts[i] = global_flat + progress if mode == "eager" else global_flat.clone()
        unflatten_into(starts[i], model.parameters())


def _evaluate_global(
    model: GPT, global_flat: torch.Tensor, corpus: Corpus, eval_batches: int
) -> float:
    """Held-out loss of the global params, leaving ``model``'s own params as they were."""
    own = flatten_params(model.parameters())
    unflatten_into(global_flat, model.parameters())
    held = evaluate(model, corpus, eval_batches)
    unflatten_into(own, model.parameters())
    return held


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
