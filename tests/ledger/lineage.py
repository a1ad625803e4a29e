"""Build a real lineage on disk: peers' feeds, the persisted dev chain, checkpoints.

The same steps the training integration takes per round, without the network: each
peer commits its update, feeds replicate (the sans-IO core through the codec), every
peer checks the others' commitments and records the round aggregate, one anchors.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from eth_account import Account

from shoal.identity.keys import Identity
from shoal.ledger.backends import ChainRecord, embedded_web3
from shoal.ledger.chain import POLICY_ALLOWLIST, ChainLedger, deploy_contract
from shoal.ledger.devchain import DevChain, dev_private_keys
from shoal.ledger.feed import FeedStore
from shoal.ledger.replication import ReplicationCore
from shoal.ledger.run_ledger import RunLedger
from shoal.training.checkpoint import Checkpoint, save_checkpoint
from shoal.training.diloco_math import model_hash
from shoal.wire.contact import Contact

from .helpers import ident, pump

RUN = "lineage-test"


@dataclass
class Lineage:
    root: Path
    dev: DevChain
    ledgers: list[RunLedger]
    chains: list[ChainLedger]
    checkpoints: list[Path] = field(default_factory=list)
    ids: list[Identity] = field(default_factory=list)

    def feed_files(self) -> list[Path]:
        return [lg.store.path for lg in self.ledgers]

    def close(self) -> None:
        for lg in self.ledgers:
            lg.store.close()
        self.dev.close()


def build_lineage(
    root: Path, peers: int = 3, rounds: int = 2, swap_anchors: bool = False
) -> Lineage:
    keys = dev_private_keys()
    w3, dev = embedded_web3(root)
    address = deploy_contract(w3, Account.from_key(keys[0]))
    run_id = hashlib.sha256(RUN.encode() + os.urandom(8)).digest()
    ChainRecord(address, run_id.hex(), w3.eth.chain_id, "shanghai").save(root)
    owner = ChainLedger(w3, keys[0], address, run_id)
    owner.create_run(POLICY_ALLOWLIST)
    ids = [ident(i + 1) for i in range(peers)]
    chains, ledgers = [], []
    for i, me in enumerate(ids):
        c = ChainLedger(w3, keys[i + 1], address, run_id)
        owner.allow(c.account.address)
        c.register_peer(me.peer_id)
        store = FeedStore(root / f"node{i}" / "ledger" / "feed.sqlite")
        lg = RunLedger(me, store, c, RUN)
        lg.join()
        chains.append(c)
        ledgers.append(lg)
    lin = Lineage(root, dev, ledgers, chains, ids=ids)
    cores = {Contact(me.peer_id, f"127.0.0.1:{9000 + i}"): ReplicationCore(lg.store)
             for i, (me, lg) in enumerate(zip(ids, ledgers, strict=True))}  # fmt: skip
    params = {"w": torch.zeros(4, 4), "b": torch.zeros(4)}
    aggregates = []
    for r in range(rounds):
        for i, lg in enumerate(ledgers):
            delta = torch.full((20,), float(r * 10 + i))
            lg.commit_update(r, hashlib.sha256(delta.numpy().tobytes()).digest(), 16 + i)
        pump(cores)
        params = {k: v + 0.5 * (r + 1) for k, v in params.items()}
        mh = bytes.fromhex(model_hash(params))
        round_aggs = []
        for lg in ledgers:
            contribs = []
            for other in ids:
                e = lg.commitment_of(other.peer_id, r)
                assert e is not None
                contribs.append(lg.accept_commitment(e, r))
            round_aggs.append(lg.record_round(r, mh, contribs))
        aggregates.append(round_aggs)
        path = root / "checkpoints" / f"round{r + 1}.safetensors"
        path.parent.mkdir(exist_ok=True)
        save_checkpoint(path, Checkpoint(params, r + 1, extra={"run": RUN}))
        lin.checkpoints.append(path)
    pump(cores)  # aggregates replicate too
    order = list(range(rounds))
    if swap_anchors:
        order = order[::-1]  # round 0's anchor tx carries round 1's aggregate and so on
    for r, src in enumerate(order):
        agg_entry = aggregates[src][0]
        from shoal.ledger.payloads import RoundAggregate, payload_of

        p = payload_of(agg_entry)
        assert isinstance(p, RoundAggregate)
        chains[0].anchor_round(r, p.feeds_root, p.model_hash,
                               [(c.author, c.samples) for c in p.contributors])  # fmt: skip
    if not swap_anchors:
        # The other members find the round anchored already, with the same root.
        assert all(lg.anchor(aggregates[-1][1]) is None for lg in ledgers[1:2])
    return lin
