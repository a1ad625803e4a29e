"""All-reduce of one fp32 vector across peer processes: shoal vs torch.distributed gloo.

    python benchmarks/bench_allreduce.py [--mib 64] [--peers 4] [--repeats 5] [--json]
                                         [--compression none|int8]

``--peers`` processes on 127.0.0.1 each hold a seeded random vector of ``--mib`` MiB.
Every process runs both engines in the same run, interleaved per repeat after one
untimed warm-up of each:

- shoal  ``shoal.averaging.all_reduce`` (equal weights): reduce-scatter + all-gather
         over authenticated, AES-256-GCM bulk streams (on bulk connections kept from
         one stream to the next: the warm-up call pays the handshakes),
         writing into an output buffer allocated once before the repeats
         (``out=``), as gloo reduces in place into a buffer cloned before its timer.
- gloo   ``torch.distributed.all_reduce(SUM)`` with the gloo backend (plaintext TCP),
         divided by the world size.
- shoal_new_output  the same shoal call without ``out=``: it allocates a new output
         tensor every call (page faults on first touch are part of its time).

Before each timed call all processes meet at a gloo barrier; each times its own call,
and a repeat's time is the slowest process's. Reported: median seconds, algorithm
bandwidth (vector bytes / time, MB = 10^6 bytes), shoal/gloo bandwidth ratio, and the
median CPU time (user + system, all threads) of one call summed over the processes:
on a loaded machine the wall time follows the CPU a call needs.
Correctness is checked too: shoal's result must match gloo's within fp32 tolerance
and be bit-identical across processes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import sys
from datetime import timedelta
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

MiB = 1024 * 1024
PATHS = ["shoal", "gloo", "shoal_new_output"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def worker(rank: int, args: dict[str, Any], pipe: Pipe) -> None:
    import time

    import torch
    import torch.distributed as dist

    from shoal.averaging import BulkRouter, all_reduce
    from shoal.identity.keys import Identity, PeerId
    from shoal.transport import Transport
    from shoal.wire.codec import Codec
    from shoal.wire.contact import Contact

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    loop = asyncio.new_event_loop()
    identity = Identity.generate()
    transport = Transport(identity, Codec(), on_message=lambda c, m: None)
    router = BulkRouter(transport)
    me = loop.run_until_complete(transport.start("127.0.0.1", 0))
    pipe.send((me.peer_id.raw, me.addr))
    contacts, port = pipe.recv()
    group = sorted((Contact(PeerId(raw), addr) for raw, addr in contacts), key=lambda c: c.peer_id)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=args["peers"],
        timeout=timedelta(seconds=300),
    )
    numel = max(1, int(args["mib"] * MiB) // 4)
    x = torch.randn(numel, generator=torch.Generator().manual_seed(1000 + rank))
    out = torch.zeros_like(x)  # shoal's reused output, touched once before the timer
    times: dict[str, list[float]] = {p: [] for p in PATHS}
    cpu: dict[str, list[float]] = {p: [] for p in PATHS}
    shoal_out = gloo_out = None
    try:
        for rep in range(args["repeats"] + 1):
            for path in PATHS:
                buf = x.clone() if path == "gloo" else None
                dist.barrier()
                t0, c0 = time.perf_counter(), time.process_time()
                if path.startswith("shoal"):
                    res = loop.run_until_complete(
                        all_reduce(
                            router,
                            me,
                            group,
                            f"bench/{rep}/{path}",
                            x,
                            1.0,
                            compression=args["compression"],
                            model_version=0,
                            timeout_s=600,
                            out=out if path == "shoal" else None,
                        )
                    )
                    if path == "shoal":
                        shoal_out = res.average
                    elif shoal_out is not None and not torch.equal(res.average, shoal_out):
                        raise AssertionError("shoal with and without out= disagree")
                else:
                    assert buf is not None
                    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                    buf /= args["peers"]
                    gloo_out = buf
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if rep > 0:
                    times[path].append(dt)
                    cpu[path].append(dc)
        assert shoal_out is not None and gloo_out is not None
        max_diff = float((shoal_out - gloo_out).abs().max())
        digest = hashlib.sha256(shoal_out.numpy().tobytes()).hexdigest()
        pipe.send({"times": times, "cpu": cpu, "max_diff": max_diff, "digest": digest})
    finally:
        dist.destroy_process_group()
        loop.run_until_complete(transport.aclose())
        loop.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=float, default=64, help="vector size (0.001: fixed costs)")
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compression", choices=["none", "int8"], default="none")
    ap.add_argument("--json", action="store_true", help="print only the JSON")
    ns = ap.parse_args()
    args = vars(ns)
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for rank in range(ns.peers):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=worker, args=(rank, args, child), daemon=True)
        p.start()
        pipes.append(parent)
        procs.append(p)
    try:
        contacts = [pipe.recv() for pipe in pipes]
        port = _free_port()
        for pipe in pipes:
            pipe.send((contacts, port))
        reports = [pipe.recv() for pipe in pipes]
        for p in procs:
            p.join(timeout=60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    vector_bytes = max(1, int(ns.mib * MiB) // 4) * 4
    rows: dict[str, dict[str, float]] = {}
    for path in PATHS:
        per_repeat = [max(r["times"][path][i] for r in reports) for i in range(ns.repeats)]
        # CPU (all threads, user + system) of all processes together: what the call
        # costs the machine, less sensitive to other load than the wall time.
        cpu_all = [sum(r["cpu"][path][i] for r in reports) for i in range(ns.repeats)]
        med = statistics.median(per_repeat)
        rows[path] = {
            "median_s": med,
            "min_s": min(per_repeat),
            "max_s": max(per_repeat),
            "algbw_MBps": vector_bytes / med / 1e6,
            "cpu_s_all_peers": statistics.median(cpu_all),
        }
    ratio = rows["shoal"]["algbw_MBps"] / rows["gloo"]["algbw_MBps"]
    ratio_new = rows["shoal_new_output"]["algbw_MBps"] / rows["gloo"]["algbw_MBps"]
    load = os.getloadavg()[0]
    result = {
        "benchmark": "bench_allreduce",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "args": args,
        "paths": rows,
        "shoal_over_gloo_bandwidth": ratio,
        "shoal_new_output_over_gloo_bandwidth": ratio_new,
        "load_average_1min_at_end": load,
        "max_abs_diff_shoal_vs_gloo": max(r["max_diff"] for r in reports),
        "shoal_bit_identical_across_peers": len({r["digest"] for r in reports}) == 1,
    }
    if not ns.json:
        print(
            f"all-reduce of {ns.mib:g} MiB fp32, {ns.peers} processes on 127.0.0.1, "
            f"{ns.repeats} repeats (shoal compression={ns.compression}); "
            f"load average {load:.1f} on {os.cpu_count()} CPUs\n"
        )
        print("| engine | median s | min s | max s | algbw MB/s | CPU s, all peers |")
        print("|---|---|---|---|---|---|")
        for path in PATHS:
            r = rows[path]
            print(
                f"| {path} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | "
                f"{r['algbw_MBps']:.0f} | {r['cpu_s_all_peers']:.3f} |"
            )
        print(
            f"\nshoal/gloo bandwidth ratio: {ratio:.2f} (target >= 1.0; "
            f"{ratio_new:.2f} with a new output tensor per call); "
            f"max |shoal - gloo| = {result['max_abs_diff_shoal_vs_gloo']:.2e}; "
            f"bit-identical across peers: {result['shoal_bit_identical_across_peers']}\n"
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
