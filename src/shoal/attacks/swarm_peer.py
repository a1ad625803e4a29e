"""One peer process of a small attack swarm: toy-task DiLoCo over the real all-reduce.

    python -m shoal.attacks.swarm_peer --dir D --index I --peers N --rounds R \
        --aggregator median [--attack scale [--attack-param factor=100]]

Every process starts its own Transport on loopback, writes its contact to
``D/peer<I>.contact``, waits for the other N-1, then runs R rounds: local steps on its
shard of the toy task, pseudo-gradient, all-reduce with the chosen aggregator, outer
Nesterov step. An attacker (``--attack``) sends its behaviour's forged update, weight
and model version through the same data plane and otherwise acts as an honest shard
owner. The result (final eval loss, model hash, exclusions) goes to
``D/peer<I>.json``. Used by tests/attacks; honest peers need nothing but this module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from pathlib import Path

import torch

from shoal.aggregation import make_aggregator
from shoal.attacks.behaviours import AttackContext, Forged, make_behaviour
from shoal.attacks.robustness import RunConfig
from shoal.attacks.toy_task import eval_loss, local_steps, make_data, make_model
from shoal.averaging import AllReduce, BulkRouter
from shoal.averaging.allreduce import Buffer
from shoal.averaging.stream_format import ContributionTag
from shoal.identity.keys import Identity
from shoal.privacy import DpPseudoGradients
from shoal.training.diloco_math import (
    OuterOptimizer,
    flatten_params,
    model_hash,
    pseudo_gradient,
    unflatten_into,
)
from shoal.transport import Transport
from shoal.wire.codec import Codec
from shoal.wire.contact import Contact

log = logging.getLogger(__name__)

CONTACTS_WAIT_S = 60.0  # all processes start within this, or the peer gives up
ALLREDUCE_TIMEOUT_S = 60.0


class ForgedVersion(AllReduce):
    """Tags its contributions with the attacker's claimed model version; as a shard
    owner it is honest (its own shard uses the forged vector it was given)."""

    claimed_version = 0

    async def contribution(self, owner: int) -> tuple[str, list[Buffer]]:
        _, body = await super().contribution(owner)
        t = ContributionTag(
            self._idx, owner, self.claimed_version, self._numel, self._codec, self._weight
        )
        return t.encode(), body


async def _contacts(d: Path, peers: int) -> list[Contact]:
    deadline = time.monotonic() + CONTACTS_WAIT_S
    while True:
        files = [d / f"peer{i}.contact" for i in range(peers)]
        if all(f.exists() for f in files):
            texts = [f.read_text().strip() for f in files]
            if all(texts):
                return sorted((Contact.parse(t) for t in texts), key=lambda c: c.peer_id)
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all {peers} peers wrote their contact in {d}")
        await asyncio.sleep(0.1)


async def main(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(1)
    d = Path(args.dir)
    params = dict(kv.split("=", 1) for kv in args.attack_param)
    behaviour = make_behaviour(args.attack, {k: float(v) for k, v in params.items()})
    cfg = RunConfig(peers=args.peers, rounds=args.rounds, seed=args.seed)
    transport = Transport(Identity.generate(), Codec(), on_message=lambda c, m: None)
    await transport.start("127.0.0.1", 0)
    try:
        router = BulkRouter(transport)
        tmp = d / f"peer{args.index}.contact.tmp"
        tmp.write_text(str(transport.contact))
        tmp.rename(d / f"peer{args.index}.contact")
        group = await _contacts(d, args.peers)
        data = make_data(cfg.peers, seed=cfg.seed)
        model = make_model(cfg.seed)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.inner_lr)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + args.index)
        attack_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 500 + args.index)
        global_flat = flatten_params(model.parameters())
        outer = OuterOptimizer(lr=cfg.outer_lr, momentum=cfg.outer_momentum)
        history: list[torch.Tensor] = []
        excluded: dict[str, str] = {}
        dp = None
        if args.dp_noise > 0:
            dp = DpPseudoGradients(args.dp_clip, args.dp_noise, args.dp_delta)
        for rnd in range(cfg.rounds):
            unflatten_into(global_flat, model.parameters())
            n = local_steps(model, opt, data.shards[args.index], cfg.inner_steps, cfg.batch, gen)
            honest = pseudo_gradient(global_flat, flatten_params(model.parameters()))
            if dp is not None:
                honest = dp.privatize(honest)  # clipped and noised before it leaves us
            forged = Forged(honest, float(n), rnd)
            if args.attack != "none":
                forged = behaviour(AttackContext(
                    honest=honest, weight=float(n), round_no=rnd, colluders=[honest],
                    group_size=args.peers, attackers=args.attackers, generator=attack_gen,
                    history=history,
                ))  # fmt: skip
                history.append(honest)
            job = ForgedVersion(
                router, transport.contact, group, f"toy/r{rnd}",
                forged.update.contiguous(), forged.weight,
                model_version=rnd, timeout_s=ALLREDUCE_TIMEOUT_S,
                probe_interval_s=1.0, aggregator=make_aggregator(args.aggregator, 0.3),
            )  # fmt: skip
            job.claimed_version = forged.version
            res = await job.run()
            for p, why in res.excluded.items():
                excluded[str(p)] = why
            outer.step(global_flat, res.average)
        unflatten_into(global_flat, model.parameters())
        return {
            "index": args.index,
            "peer_id": str(transport.contact.peer_id),
            "attack": args.attack,
            "final_loss": eval_loss(model, data),
            "model_hash": model_hash(global_flat),
            "excluded": excluded,
            "epsilon": dp.epsilon_spent() if dp is not None else None,
            "delta": args.dp_delta if dp is not None else None,
        }
    finally:
        await transport.aclose()


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--peers", type=int, required=True)
    p.add_argument("--attackers", type=int, default=0)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aggregator", default="mean")
    p.add_argument("--attack", default="none")
    p.add_argument("--attack-param", action="append", default=[])
    p.add_argument("--dp-noise", type=float, default=0.0, help="noise multiplier; 0 = no DP")
    p.add_argument("--dp-clip", type=float, default=1.0)
    p.add_argument("--dp-delta", type=float, default=1e-5)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(main(args))
    out = Path(args.dir) / f"peer{args.index}.json"
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    cli()
