"""Time and memory of each robust aggregator and of secure aggregation, as ratios to
plain averaging measured in the same run.

    python benchmarks/bench_aggregation.py [--peers 10] [--mib 4] [--repeats 5] [--json]

1. Rules alone (what one shard owner computes): ``--peers`` contributions of
   ``--mib`` MiB each, whole-vector mode. Baseline: the weighted mean.
2. Inside the real all-reduce: 4 members on loopback in one process (real Transports,
   AES-GCM bulk streams), a --mib MiB vector, each rule at the shard owners (Krum and
   centered clipping add their nested exchanges). Baseline: the default mean.
3. Secure aggregation (5 peers, threshold 3), in-process (client + collector cores,
   no network): the unmasked sum, with and without one dropout. Baseline: the plain
   sum of the same vectors.
4. Secure aggregation over the network (``--net-peers`` members, real Transports in
   one process): one weighted-mean round by the networked SecAgg driver against the
   plain mean all-reduce, fp32 and int8 on the wire. Baseline: the fp32 all-reduce.
   Also the bytes every transport sent (payload, AEAD records, handshakes).

Each case runs in a fresh spawned process; time is the median over ``--repeats``
after one warm-up; memory is the growth of that process's peak RSS (ru_maxrss) across
the measured calls, i.e. the extra memory the step needs beyond its inputs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

MiB = 1024 * 1024
RULES = ["mean", "median", "trimmed_mean", "centered_clip", "krum"]


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rule_case(name: str, peers: int, mib: float, repeats: int) -> dict[str, float]:
    import torch

    from shoal.aggregation import make_aggregator

    torch.set_num_threads(1)
    k = int(mib * MiB) // 4
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(k, generator=g) for _ in range(peers)]
    agg = make_aggregator(name, 0.3)
    before = _peak_mib()
    agg.aggregate(list(xs), [1.0] * peers)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        agg.aggregate(list(xs), [1.0] * peers)
        times.append(time.perf_counter() - t)
    return {"s": statistics.median(times), "extra_mib": _peak_mib() - before}


def _allreduce_case(name: str, peers: int, mib: float, repeats: int) -> dict[str, float]:
    import torch

    from shoal.aggregation import make_aggregator
    from shoal.averaging import AllReduce, BulkRouter
    from shoal.identity.keys import Identity
    from shoal.transport import Transport
    from shoal.wire.codec import Codec

    torch.set_num_threads(1)
    k = int(mib * MiB) // 4
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(k, generator=g) for _ in range(peers)]

    async def main() -> list[float]:
        ts = [Transport(Identity.generate(), Codec(), on_message=lambda c, m: None)
              for _ in range(peers)]  # fmt: skip
        for t in ts:
            await t.start("127.0.0.1", 0)
        ts.sort(key=lambda t: t.contact.peer_id)
        routers = [BulkRouter(t) for t in ts]
        group = [t.contact for t in ts]
        times = []
        try:
            for rep in range(repeats + 1):
                jobs = [
                    AllReduce(
                        r, t.contact, group, f"bench/{name}/{rep}", x, 1.0,
                        model_version=1, timeout_s=120.0,
                        aggregator=None if name == "mean" else make_aggregator(name, 0.3),
                    ).run()
                    for r, t, x in zip(routers, ts, xs, strict=True)
                ]  # fmt: skip
                start = time.perf_counter()
                await asyncio.gather(*jobs)
                if rep:
                    times.append(time.perf_counter() - start)
        finally:
            for t in ts:
                await t.aclose()
        return times

    before = _peak_mib()
    times = asyncio.run(main())
    return {"s": statistics.median(times), "extra_mib": _peak_mib() - before}


def _secagg_case(name: str, peers: int, mib: float, repeats: int) -> dict[str, float]:
    import torch

    from shoal.secagg import run_local

    torch.set_num_threads(1)
    k = int(mib * MiB) // 4
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(k, generator=g) for _ in range(peers)]

    def once() -> None:
        if name == "plain_sum":
            torch.stack(xs).sum(0)
        elif name == "secagg":
            run_local(xs, 3)
        else:
            run_local(xs, 3, drop_after_shares=[2])

    before = _peak_mib()
    once()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    return {"s": statistics.median(times), "extra_mib": _peak_mib() - before}


def _secagg_net_case(name: str, peers: int, mib: float, repeats: int) -> dict[str, float]:
    """One averaging round among ``peers`` real Transports in this process: the plain
    mean all-reduce or secure aggregation (collector = lowest peer id), fp32 or int8
    on the wire. Bytes = what every transport sent (payload + AEAD + handshakes)."""
    import torch

    from shoal.averaging import AllReduce
    from shoal.secagg.group_driver import secure_average
    from shoal.secagg.transport_host import TransportHost

    torch.set_num_threads(1)
    kind, _, codec = name.partition("/")
    k = int(mib * MiB) // 4
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(k, generator=g) * 0.01 for _ in range(peers)]
    ws = [float(16 * (i + 1)) for i in range(peers)]

    async def main() -> tuple[list[float], list[int]]:
        hs = [TransportHost() for _ in range(peers)]
        for h in hs:
            await h.start()
        hs.sort(key=lambda h: h.contact.peer_id)
        group = [h.contact for h in hs]
        times, sent = [], []
        try:
            for rep in range(repeats + 1):
                if kind == "secagg":
                    jobs = [
                        secure_average(h, group, f"bench/{name}/{rep}", x, ws,
                                       compression=codec, timeout_s=120.0)
                        for h, x in zip(hs, xs, strict=True)
                    ]  # fmt: skip
                else:
                    jobs = [
                        AllReduce(h.router, h.contact, group, f"bench/{name}/{rep}", x, w,
                                  compression=codec, model_version=1, timeout_s=120.0).run()
                        for h, x, w in zip(hs, xs, ws, strict=True)
                    ]  # fmt: skip
                before = sum(h.transport.bytes_sent for h in hs)
                start = time.perf_counter()
                await asyncio.gather(*jobs)
                if rep:
                    times.append(time.perf_counter() - start)
                    sent.append(sum(h.transport.bytes_sent for h in hs) - before)
        finally:
            for h in hs:
                await h.aclose()
        return times, sent

    before = _peak_mib()
    times, sent = asyncio.run(main())
    return {"s": statistics.median(times), "extra_mib": _peak_mib() - before,
            "bytes": statistics.median(sent)}  # fmt: skip


CASES = {
    "rule": _rule_case,
    "allreduce": _allreduce_case,
    "secagg": _secagg_case,
    "secagg_net": _secagg_net_case,
}


def _child(kind: str, name: str, peers: int, mib: float, repeats: int, q: Any) -> None:
    try:
        q.put(CASES[kind](name, peers, mib, repeats))
    except Exception as exc:  # reported by the parent, which would otherwise wait
        q.put({"error": f"{type(exc).__name__}: {exc}"})
        raise


def measure(kind: str, name: str, peers: int, mib: float, repeats: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(kind, name, peers, mib, repeats, q))
    p.start()
    out: dict[str, Any] = q.get(timeout=900)
    p.join()
    if "error" in out:
        raise RuntimeError(f"{kind}/{name} failed: {out['error']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=10)
    ap.add_argument("--mib", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--net-peers", type=int, nargs="*", default=[4, 8],
                    help="group sizes for the secagg-over-the-network part")  # fmt: skip
    ap.add_argument("--only", default="", help="run one part only (rule, allreduce, ...)")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []

    def section(kind: str, names: list[str], peers: int, mib: float, base: str) -> None:
        if args.only and kind != args.only:
            return
        got = {n: measure(kind, n, peers, mib, args.repeats) for n in names}
        for n in names:
            r = got[n]
            rows.append({
                "part": kind, "case": n, "peers": peers, "mib": mib,
                "median_s": r["s"], "time_ratio": r["s"] / got[base]["s"],
                "extra_mib": r["extra_mib"],
                "extra_mib_ratio": r["extra_mib"] / max(got[base]["extra_mib"], 1e-9),
                "bytes": r.get("bytes"),
                "bytes_ratio": r["bytes"] / got[base]["bytes"] if "bytes" in r else None,
            })  # fmt: skip

    section("rule", RULES, args.peers, args.mib, "mean")
    section("allreduce", RULES, 4, args.mib, "mean")
    section("secagg", ["plain_sum", "secagg", "secagg_1_dropout"], 5, args.mib, "plain_sum")
    net = ["allreduce/none", "secagg/none", "allreduce/int8", "secagg/int8"]
    for peers in args.net_peers:
        section("secagg_net", net, peers, args.mib, "allreduce/none")
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "repeats": args.repeats}
    if args.json:
        sys.stdout.write(json.dumps({"meta": meta, "rows": rows}) + "\n")
        return
    sys.stdout.write(
        "| part | case | peers | MiB/peer | median s | time / baseline | extra peak MiB "
        "| extra MiB / baseline | MB sent (all) | bytes / baseline |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    for r in rows:
        sent = f"{r['bytes'] / 1e6:.1f} | {r['bytes_ratio']:.2f}x" if r["bytes"] else "- | -"
        sys.stdout.write(
            f"| {r['part']} | {r['case']} | {r['peers']} | {r['mib']:g} | {r['median_s']:.3f} | "
            f"{r['time_ratio']:.2f}x | {r['extra_mib']:.0f} | {r['extra_mib_ratio']:.2f}x "
            f"| {sent} |\n"
        )


if __name__ == "__main__":
    main()
