"""`shoal chain` as a real process: several clients share it; state survives a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from eth_account import Account

from shoal.ledger.backends import rpc_web3
from shoal.ledger.chain import POLICY_ALLOWLIST, ChainLedger, deploy_contract
from shoal.ledger.devchain import dev_private_keys

from .helpers import digest, ident


def _start(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "chain", "--data-dir", str(data_dir),
         "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    url = proc.stdout.readline().decode().strip()
    proc.stdout.close()
    assert url.startswith("http://127.0.0.1:"), url
    return proc, url


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_chain_process_persists_across_restarts(tmp_path: Path) -> None:
    keys = dev_private_keys()
    proc, url = _start(tmp_path)
    try:
        w3 = rpc_web3(url)
        address = deploy_contract(w3, Account.from_key(keys[0]))
        run_id = os.urandom(32)
        owner = ChainLedger(w3, keys[0], address, run_id)
        owner.create_run(POLICY_ALLOWLIST)
        # A second client (another account, another connection) shares the chain.
        peer = ChainLedger(rpc_web3(url), keys[1], address, run_id)
        owner.allow(peer.account.address)
        peer.register_peer(ident(1).peer_id)
        peer.anchor_round(0, digest(1), digest(2), [(ident(1).peer_id, 3)])
        assert (tmp_path / "chain" / "rpc.json").exists()
    finally:
        _stop(proc)
    assert not (tmp_path / "chain" / "rpc.json").exists()
    proc, url = _start(tmp_path)
    try:
        again = ChainLedger(rpc_web3(url), keys[2], address, run_id)
        assert again.anchor(0) == (digest(1), digest(2), ident(1).peer_id)
        assert again.credits(ident(1).peer_id) == 3
    finally:
        _stop(proc)
