"""Chain fixtures: the embedded dev chain, and a real Hardhat 2.29.1 node over HTTP.

The Hardhat node is started once per session on 127.0.0.1 with a free port, from
``tools/hardhat`` (installed by ``make test`` with npm), and killed by its PID after.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from shoal.ledger.backends import embedded_web3, rpc_web3
from shoal.ledger.devchain import DevChain, dev_private_keys
from shoal.ledger.rpc_server import make_server, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
HARDHAT_DIR = ROOT / "tools" / "hardhat"
HARDHAT_BIN = HARDHAT_DIR / "node_modules" / ".bin" / "hardhat"
# Hardhat's documented dev mnemonic: its node funds these accounts at genesis.
HARDHAT_MNEMONIC = "test test test test test test test test test test test junk"
HARDHAT_START_TIMEOUT_S = 90.0


def hardhat_keys(n: int = 6) -> list[bytes]:
    Account.enable_unaudited_hdwallet_features()
    return [
        bytes(Account.from_mnemonic(HARDHAT_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}").key)
        for i in range(n)
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def hardhat_url() -> Iterator[str]:
    if not HARDHAT_BIN.exists():
        pytest.skip("Hardhat is not installed: run `npm ci` in tools/hardhat (make test does)")
    port = _free_port()
    log = open(HARDHAT_DIR / "node.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(HARDHAT_BIN), "node", "--hostname", "127.0.0.1", "--port", str(port)],
        cwd=HARDHAT_DIR, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HARDHAT_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"hardhat exited with {proc.returncode}; see node.log")
            try:
                if rpc_web3(url).eth.chain_id == 31337:
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield url
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@dataclass
class ChainUnderTest:
    name: str
    w3: Web3
    keys: list[bytes]  # funded accounts; keys[0] deploys and owns runs


@pytest.fixture(params=["embedded", "served", "hardhat"])
def chain(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChainUnderTest]:
    if request.param == "embedded":
        w3, dev = embedded_web3(tmp_path)
        yield ChainUnderTest("embedded", w3, dev_private_keys())
        dev.close()
    elif request.param == "served":
        # The dev chain behind ``shoal chain``'s JSON-RPC server, reached over HTTP.
        dev = DevChain(tmp_path / "chain")
        server = make_server(dev)
        thread = serve_in_thread(server)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        yield ChainUnderTest("served", rpc_web3(url), dev_private_keys())
        server.shutdown()
        server.server_close()
        thread.join()
        dev.close()
    else:
        url = request.getfixturevalue("hardhat_url")
        yield ChainUnderTest("hardhat", rpc_web3(url), hardhat_keys())
