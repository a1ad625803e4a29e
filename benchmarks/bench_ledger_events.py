"""Reading N rounds of on-chain anchor events: shoal's log index vs eth-tester's getLogs.

    python benchmarks/bench_ledger_events.py [--rounds 10000] [--baseline 100,200,300]

Anchors ``--rounds`` rounds (one transaction each, 4 peers) on the embedded dev chain,
and at 10%, 25%, 50% and 100% of them times reading *all* anchor events so far through
``ChainLedger.anchor_events()`` (web3 ``eth_getLogs`` in 5000-block spans, answered
from the dev chain's SQLite log index, then ABI-decoded). Baseline, in the same run on
a fresh chain: eth-tester's own ``eth_getLogs`` path (the one DevChain replaces) at
small N, since it grows quadratically. Also reports the tx throughput while building
and the time to reopen the persisted chain from its snapshot, against replaying the
whole tx log (the baseline, and what a read-only ``shoal verify`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from eth_account import Account
from web3 import EthereumTesterProvider
from web3.types import RPCEndpoint

from shoal.identity.keys import Identity
from shoal.ledger.backends import embedded_web3
from shoal.ledger.chain import (
    GAS_ANCHOR_BASE,
    GAS_ANCHOR_PER_PEER,
    POLICY_ALLOWLIST,
    ChainLedger,
    deploy_contract,
)
from shoal.ledger.devchain import DevChain, dev_private_keys

PEERS = 4


def setup(data_dir: Path | None) -> tuple[Any, DevChain, ChainLedger, list[Any]]:
    w3, dev = embedded_web3(data_dir)
    keys = dev_private_keys()
    address = deploy_contract(w3, Account.from_key(keys[0]))
    lg = ChainLedger(w3, keys[0], address, os.urandom(32))
    lg.create_run(POLICY_ALLOWLIST)
    lg.allow(lg.account.address)
    peers = [Identity.from_seed(bytes([i + 1]) * 32).peer_id for i in range(PEERS)]
    lg.register_peer(peers[0])
    for i, p in enumerate(peers[1:], start=1):
        other = ChainLedger(w3, keys[i], address, lg.run_id)
        lg.allow(other.account.address)
        other.register_peer(p)
    return w3, dev, lg, peers


def anchor_fast(
    w3: Any, dev: DevChain, lg: ChainLedger, peers: list[Any], start: int, n: int
) -> float:
    """Send ``n`` pre-signed anchor txs straight to the chain; returns seconds."""
    nonce = w3.eth.get_transaction_count(lg.account.address)
    chain_id = w3.eth.chain_id
    fn = lg.contract.functions.anchor_round
    t0 = time.perf_counter()
    for r in range(start, start + n):
        data = fn(lg.run_id, r, r.to_bytes(32, "big"), (r + 1).to_bytes(32, "big"),
                  [p.raw for p in peers], [1] * len(peers))._encode_transaction_data()  # fmt: skip
        gas = GAS_ANCHOR_BASE + GAS_ANCHOR_PER_PEER * len(peers)
        tx = {"to": lg.address, "data": data, "gas": gas, "gasPrice": 10**10,
              "nonce": nonce, "chainId": chain_id, "value": 0}  # fmt: skip
        raw = Account.from_key(lg.account.key).sign_transaction(tx).raw_transaction
        resp = dev.make_request(RPCEndpoint("eth_sendRawTransaction"), ["0x" + raw.hex()])
        assert "error" not in resp, resp
        nonce += 1
    return time.perf_counter() - t0


def time_read(lg: ChainLedger, expect: int, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        events = lg.anchor_events()
        times.append(time.perf_counter() - t0)
        assert len(events) == expect and events[-1].round == expect - 1
    return statistics.median(times)


def baseline(n: int) -> float:
    """eth-tester's own eth_getLogs over n anchor events (fresh in-memory chain)."""
    w3, dev, lg, peers = setup(None)
    anchor_fast(w3, dev, lg, peers, 0, n)
    topic = str(lg.contract.events.RoundAnchored().topic)
    flt = {"from_block": 0, "to_block": w3.eth.block_number, "address": lg.address,
           "topics": [topic]}  # fmt: skip
    t0 = time.perf_counter()
    resp = EthereumTesterProvider.make_request(dev, RPCEndpoint("eth_getLogs"), [flt])
    dt = time.perf_counter() - t0
    assert len(resp["result"]) == n, len(resp["result"])
    dev.close()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10_000)
    ap.add_argument("--baseline", default="100,200,300")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {"machine": f"{platform.machine()} {os.cpu_count()} cpus",
                           "python": platform.python_version(), "rounds": args.rounds}  # fmt: skip
    base = {}
    for n in (int(x) for x in args.baseline.split(",") if x):
        base[n] = baseline(n)
        print(f"eth-tester getLogs, {n} events: {base[n]:.2f} s", file=sys.stderr)
    out["eth_tester_getlogs_s"] = base
    with tempfile.TemporaryDirectory() as tmp:
        w3, dev, lg, peers = setup(Path(tmp))
        marks = sorted({max(1, args.rounds * k // 100) for k in (10, 25, 50, 100)})
        done, send_s, reads = 0, 0.0, {}
        for m in marks:
            send_s += anchor_fast(w3, dev, lg, peers, done, m - done)
            done = m
            reads[m] = time_read(lg, m)
            print(f"{m} rounds: read all in {reads[m]:.3f} s ({reads[m] / m * 1e6:.0f} us/event);"
                  f" sent at {done / send_s:.0f} tx/s", file=sys.stderr)  # fmt: skip
        out["index_read_s"] = reads
        out["tx_per_s"] = round(done / send_s, 1)
        t0 = time.perf_counter()
        dev.close()  # clean close: writes the snapshot
        out["snapshot_write_s"] = round(time.perf_counter() - t0, 2)
        snap = Path(tmp) / "chain" / "state.snapshot"
        out["snapshot_mib"] = round(snap.stat().st_size / 2**20, 1)
        t0 = time.perf_counter()
        w3b, dev2 = embedded_web3(Path(tmp))
        out["reopen_snapshot_s"] = round(time.perf_counter() - t0, 2)
        assert dev2.loaded_snapshot
        again = ChainLedger(w3b, lg.account.key, lg.address, lg.run_id)
        assert again.anchor(args.rounds - 1) is not None
        out["read_after_reopen_s"] = round(time_read(again, args.rounds, 1), 3)
        dev2.close()
        # Baseline: replay the whole tx log (what `shoal verify` does, trusting no snapshot).
        t0 = time.perf_counter()
        w3c, dev3 = embedded_web3(Path(tmp), readonly=True)
        out["reopen_full_replay_s"] = round(time.perf_counter() - t0, 2)
        assert ChainLedger(w3c, lg.account.key, lg.address, lg.run_id).anchor(args.rounds - 1)
        dev3.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
