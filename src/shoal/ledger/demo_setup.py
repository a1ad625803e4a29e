"""Set up the ledger for a local swarm (``shoal demo``): a shared dev chain, the run
contract, and each node's admission, keys and chain record.

The chain runs as its own process (``shoal chain``) so every node process reaches it
over JSON-RPC on loopback; it persists to ``OUT/chain`` so ``shoal verify`` works
after everything has exited.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account

from shoal.identity.keys import Identity, PeerId
from shoal.ledger.artifacts import DEFAULT_EVM_VERSION
from shoal.ledger.backends import ChainRecord, rpc_web3, write_chain_key
from shoal.ledger.chain import POLICY_ALLOWLIST, ChainLedger, deploy_contract
from shoal.ledger.devchain import dev_private_keys
from shoal.ledger.training_hook import CHAIN_KEY_PATH

log = logging.getLogger(__name__)

CHAIN_START_TIMEOUT_S = 60.0
NODE_KEY_FILE = "node.key"  # runtime/node.py's KEY_FILE


@dataclass
class DemoChain:
    proc: subprocess.Popen[bytes]
    url: str
    owner: ChainLedger
    peers: list[PeerId]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_chain(out: Path) -> tuple[subprocess.Popen[bytes], str]:
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "chain.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "chain", "--data-dir", str(out), "--port", "0"],
        stdout=subprocess.PIPE, stderr=logf, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    logf.close()
    assert proc.stdout is not None
    deadline = time.monotonic() + CHAIN_START_TIMEOUT_S
    line = proc.stdout.readline().decode().strip()
    proc.stdout.close()
    if not line.startswith("http://"):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the dev chain did not start; see {out / 'chain.log'}")
    while time.monotonic() < deadline:
        try:
            if rpc_web3(line).eth.chain_id:
                return proc, line
        except Exception:
            time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise TimeoutError("the dev chain did not answer")


def setup_demo_ledger(out: Path, node_dirs: list[Path], run: str) -> DemoChain:
    keys = dev_private_keys()
    if len(node_dirs) > len(keys) - 1:
        raise ValueError(f"the dev chain funds {len(keys) - 1} node accounts")
    proc, url = start_chain(out)
    try:
        w3 = rpc_web3(url)
        address = deploy_contract(w3, Account.from_key(keys[0]))
        run_id = hashlib.sha256(f"{run}/{time.time_ns()}".encode()).digest()
        owner = ChainLedger(w3, keys[0], address, run_id)
        owner.create_run(POLICY_ALLOWLIST)
        record = ChainRecord(address, run_id.hex(), w3.eth.chain_id, DEFAULT_EVM_VERSION)
        record.save(out)  # verify: the embedded chain persisted in OUT/chain
        peers = []
        for i, d in enumerate(node_dirs):
            ident = Identity.load_or_create(d / NODE_KEY_FILE)
            write_chain_key(d / CHAIN_KEY_PATH, keys[i + 1])
            mine = ChainLedger(w3, keys[i + 1], address, run_id)
            owner.allow(mine.account.address)
            mine.register_peer(ident.peer_id)
            ChainRecord(address, run_id.hex(), record.chain_id, DEFAULT_EVM_VERSION, url).save(d)
            peers.append(ident.peer_id)
        log.info("ledger: run %s on %s, %d peers admitted", run_id.hex()[:12], url, len(peers))
        return DemoChain(proc, url, owner, peers)
    except BaseException:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
