"""On-chain transactions per round against the number of peers.

    python benchmarks/bench_ledger_tx.py [--peers 1,4,16,64,256]

For each swarm size n, n peers (each its own funded account) are admitted to a run
on the embedded dev chain, then one round is anchored the shoal way: ONE
``anchor_round`` transaction carrying the Merkle root of the n feed heads, the model
hash and n credits. Baseline in the same run: per-peer anchoring, where each of the n
peers sends its own anchor transaction (n txs). Counted from the chain itself (block
and nonce deltas), with the gas each path used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from eth_account import Account
from web3.types import RPCEndpoint

from shoal.identity.keys import Identity
from shoal.ledger.backends import embedded_web3
from shoal.ledger.chain import (
    GAS_ALLOW,
    GAS_ANCHOR_BASE,
    GAS_ANCHOR_PER_PEER,
    GAS_REGISTER,
    POLICY_ALLOWLIST,
    ChainLedger,
    deploy_contract,
)
from shoal.ledger.devchain import DevChain, dev_private_keys


class Sender:
    """Pre-signed raw txs straight into the dev chain (setup speed, not measured)."""

    def __init__(self, w3: Any, dev: DevChain) -> None:
        self.w3, self.dev = w3, dev
        self.chain_id = w3.eth.chain_id
        self.nonces: dict[str, int] = {}

    def send(self, acct: Any, to: str, data: str = "0x", value: int = 0, gas: int = 21_000) -> Any:
        n = self.nonces.get(acct.address)
        if n is None:
            n = self.w3.eth.get_transaction_count(acct.address)
        tx = {"to": to, "data": data, "value": value, "gas": gas, "gasPrice": 10**10,
              "nonce": n, "chainId": self.chain_id}  # fmt: skip
        raw = acct.sign_transaction(tx).raw_transaction
        resp = self.dev.make_request(RPCEndpoint("eth_sendRawTransaction"), ["0x" + raw.hex()])
        assert "error" not in resp, resp
        self.nonces[acct.address] = n + 1
        receipt = self.w3.eth.get_transaction_receipt(resp["result"])
        assert receipt["status"] == 1, receipt
        return receipt


def measure(n: int) -> dict[str, Any]:
    w3, dev = embedded_web3(None)
    owner_acct = Account.from_key(dev_private_keys()[0])
    address = deploy_contract(w3, owner_acct)
    owner = ChainLedger(w3, owner_acct, address, os.urandom(32))
    owner.create_run(POLICY_ALLOWLIST)
    s = Sender(w3, dev)
    f = owner.contract.functions
    peers, accts = [], []
    for i in range(n):
        acct = Account.from_key(bytes.fromhex(f"{i + 1:064x}"))
        pid = Identity.from_seed((i + 1).to_bytes(32, "big")).peer_id
        s.send(owner_acct, acct.address, value=10**18)
        s.send(owner_acct, address, f.allow(owner.run_id, acct.address)._encode_transaction_data(),
               gas=GAS_ALLOW)  # fmt: skip
        s.send(acct, address, f.register_peer(owner.run_id, pid.raw)._encode_transaction_data(),
               gas=GAS_REGISTER)  # fmt: skip
        peers.append(pid)
        accts.append(acct)
    # shoal: one transaction for the whole round.
    b0 = w3.eth.block_number
    receipt = s.send(accts[0], address, f.anchor_round(
        owner.run_id, 0, b"\x01" * 32, b"\x02" * 32, [p.raw for p in peers], [1] * n,
    )._encode_transaction_data(), gas=GAS_ANCHOR_BASE + GAS_ANCHOR_PER_PEER * n)  # fmt: skip
    shoal_txs = w3.eth.block_number - b0
    shoal_gas = receipt["gasUsed"]
    assert owner.anchor(0) is not None
    # baseline: every peer anchors its own head in its own transaction.
    b0 = w3.eth.block_number
    base_gas = 0
    for i, (acct, pid) in enumerate(zip(accts, peers, strict=True)):
        data = f.anchor_round(owner.run_id, 1 + i, b"\x03" * 32, b"\x04" * 32, [pid.raw], [1])
        base_gas += s.send(acct, address, data._encode_transaction_data(),
                           gas=GAS_ANCHOR_BASE + GAS_ANCHOR_PER_PEER)["gasUsed"]  # fmt: skip
    base_txs = w3.eth.block_number - b0
    return {"peers": n, "shoal_txs_per_round": shoal_txs, "shoal_gas": shoal_gas,
            "per_peer_txs_per_round": base_txs, "per_peer_gas": base_gas}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", default="1,4,16,64,256")
    args = ap.parse_args()
    rows = [measure(int(n)) for n in args.peers.split(",")]
    for r in rows:
        print(f"{r['peers']:>4} peers: shoal {r['shoal_txs_per_round']} tx ({r['shoal_gas']:,} gas)"
              f" | per-peer {r['per_peer_txs_per_round']} tx ({r['per_peer_gas']:,} gas)",
              file=sys.stderr)  # fmt: skip
    print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cpus", "rows": rows}))


if __name__ == "__main__":
    main()
