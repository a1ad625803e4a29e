"""How a ``ChainLedger`` reaches a chain: the embedded dev chain or JSON-RPC.

Also where a run's deployment is recorded (``<data dir>/ledger/chain.json``: contract
address, run id, chain id, EVM version), so ``shoal verify`` can find it after the
nodes that wrote it have exited.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.providers.rpc import HTTPProvider

from shoal.ledger.chain import ChainLedger
from shoal.ledger.devchain import DevChain, dev_private_keys

CHAIN_KEY_ENV = "SHOAL_CHAIN_KEY"
CHAIN_RECORD = Path("ledger") / "chain.json"
DEVCHAIN_DIR = Path("chain")
# A JSON-RPC request that takes longer than this means the node is gone.
RPC_TIMEOUT_S = 30.0


class ChainKeyError(ValueError):
    """No usable signing key for the chain account."""


@dataclass(frozen=True)
class ChainRecord:
    contract: str
    run_id: str  # hex
    chain_id: int
    evm_version: str
    rpc_url: str = ""  # where nodes reach the chain (empty: the embedded chain in DIR/chain)

    def save(self, data_dir: Path) -> None:
        path = data_dir / CHAIN_RECORD
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, data_dir: Path) -> ChainRecord:
        return cls.load_file(data_dir / CHAIN_RECORD)

    @classmethod
    def load_file(cls, path: Path) -> ChainRecord:
        try:
            doc = json.loads(path.read_text())
            return cls(
                str(doc["contract"]), str(doc["run_id"]), int(doc["chain_id"]),
                str(doc["evm_version"]), str(doc.get("rpc_url", "")),
            )  # fmt: skip
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"no chain record at {path}; was a ledger used here?") from exc
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"chain record {path} is malformed: {exc}") from exc


def embedded_web3(data_dir: Path | None, readonly: bool = False) -> tuple[Web3, DevChain]:
    """The dev chain in this process, persisted under ``data_dir/chain`` (None: memory)."""
    chain = DevChain(None if data_dir is None else data_dir / DEVCHAIN_DIR, readonly)
    return Web3(chain), chain


def rpc_web3(url: str) -> Web3:
    w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": RPC_TIMEOUT_S}))
    return w3


def load_chain_key(key_file: Path | None = None) -> LocalAccount:
    """The signing key: from ``key_file`` (hex, mode 0600), else $SHOAL_CHAIN_KEY."""
    if key_file is not None:
        mode = key_file.stat().st_mode & 0o077
        if mode:
            raise ChainKeyError(f"chain key file {key_file} is readable by others; chmod 600 it")
        text = key_file.read_text().strip()
    else:
        text = os.environ.get(CHAIN_KEY_ENV, "").strip()
        if not text:
            raise ChainKeyError(f"no chain key: pass --chain-key FILE or set ${CHAIN_KEY_ENV}")
    try:
        acct: LocalAccount = Account.from_key(text)
    except (ValueError, TypeError) as exc:
        raise ChainKeyError("the chain key is not a 32-byte hex private key") from exc
    return acct


def write_chain_key(path: Path, key: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, ("0x" + key.hex() + "\n").encode())
    finally:
        os.close(fd)


def open_run_chain(
    data_dir: Path, chain_rpc: str | None = None, account: LocalAccount | None = None
) -> tuple[ChainLedger, DevChain | None]:
    """The ledger recorded in ``data_dir``: over ``chain_rpc``, else the embedded chain
    persisted in ``data_dir/chain``. Without ``account`` it can only read."""
    record = ChainRecord.load(data_dir)
    dev: DevChain | None = None
    if chain_rpc is not None:
        w3 = rpc_web3(chain_rpc)
        signer = account or Account.create()  # reads need a sender, not funds
    else:
        if not (data_dir / DEVCHAIN_DIR / "txlog.bin").exists():
            raise FileNotFoundError(f"no dev chain in {data_dir / DEVCHAIN_DIR}; use --chain-rpc")
        # Read-only: replay the whole log, trust no snapshot, change nothing in DIR.
        w3, dev = embedded_web3(data_dir, readonly=True)
        # eth-tester charges calls for gas, so reads come from a funded dev account.
        signer = account or Account.from_key(dev_private_keys()[0])
    if w3.eth.chain_id != record.chain_id:
        raise ValueError(f"chain id {w3.eth.chain_id} is not the run's chain {record.chain_id}")
    return ChainLedger(w3, signer, record.contract, bytes.fromhex(record.run_id)), dev
