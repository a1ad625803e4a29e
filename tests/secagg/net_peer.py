"""One SecAgg peer process over a real Transport on loopback (tests/secagg).

    python -m tests.secagg.net_peer --dir D --index I --peers N --numel K
        [--seed S] [--pause-at POS] [--hostile POS=MODE ...] [--timeout-s T]

Writes ``D/peer<I>.contact`` ("<contact> <weight>"), waits for the other N-1, sorts
them by peer id (the group), and runs one ``secure_average`` of its input
(``net_helpers.inputs(N, K, S)[I]``, weight 10 + I). The peer at group position
``--pause-at`` stops after sending its shares and writes ``D/peer<I>.paused`` (the test
then SIGKILLs it); ``--hostile POS=MODE`` makes the peer at POS a ``hostile.Hostile``.
Result: ``D/peer<I>.json`` and the average in ``D/peer<I>.avg.pt``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from shoal.averaging import AllReduceFailed
from shoal.secagg.group_driver import MemberRun, secure_average
from shoal.secagg.transport_host import TransportHost
from shoal.wire.contact import Contact
from tests.secagg.hostile import Hostile
from tests.secagg.net_helpers import inputs

CONTACTS_WAIT_S = 120.0


class PauseAfterShares(MemberRun):
    marker: Path = Path()

    async def after_shares(self) -> None:
        self.marker.write_text("shares sent")
        await asyncio.sleep(3600)  # the test SIGKILLs us here


async def _group(d: Path, peers: int) -> list[tuple[Contact, float]]:
    deadline = time.monotonic() + CONTACTS_WAIT_S
    while True:
        texts = [f.read_text().split() for f in sorted(d.glob("peer*.contact"))]
        if len(texts) == peers and all(len(t) == 2 for t in texts):
            members = [(Contact.parse(c), float(w)) for c, w in texts]
            return sorted(members, key=lambda m: m[0].peer_id)
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all {peers} peers wrote their contact in {d}")
        await asyncio.sleep(0.1)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    d = Path(args.dir)
    host = TransportHost()
    await host.start()
    try:
        tmp = d / f"peer{args.index}.contact.tmp"
        tmp.write_text(f"{host.contact} {10.0 + args.index}")
        tmp.rename(d / f"peer{args.index}.contact")
        members = await _group(d, args.peers)
        group = [c for c, _ in members]
        pos = [c.peer_id for c in group].index(host.contact.peer_id)
        hostile = dict(h.split("=", 1) for h in args.hostile)
        member_type: type[MemberRun] = MemberRun
        if pos == args.pause_at:
            member_type = type("Paused", (PauseAfterShares,),
                               {"marker": d / f"peer{args.index}.paused"})  # fmt: skip
        elif str(pos) in hostile:
            member_type = type("H", (Hostile,), {"mode": hostile[str(pos)]})
        x = inputs(args.peers, args.numel, args.seed)[args.index]
        out: dict[str, Any] = {"index": args.index, "position": pos,
                               "peer_id": str(host.contact.peer_id)}  # fmt: skip
        try:
            res = await secure_average(
                host, group, "proc-test/r0", x, [w for _, w in members],
                timeout_s=args.timeout_s, probe_interval_s=0.5, member_type=member_type,
            )  # fmt: skip
        except AllReduceFailed as exc:
            out["error"] = str(exc)
            return out
        torch.save(res.average, d / f"peer{args.index}.avg.pt")
        out.update(
            contributors=[str(p) for p in res.contributors],
            excluded={str(p): why for p, why in res.excluded.items()},
            total_weight=res.total_weight,
        )
        return out
    finally:
        await host.aclose()


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--peers", type=int, required=True)
    p.add_argument("--numel", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pause-at", type=int, default=-1)
    p.add_argument("--hostile", action="append", default=[])
    p.add_argument("--timeout-s", type=float, default=30.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = asyncio.run(main(args))
    (Path(args.dir) / f"peer{args.index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    cli()
