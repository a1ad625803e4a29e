"""The embedded development chain: eth-tester + py-evm, persisted to the data dir.

py-evm keeps state in memory only, so persistence is a write-ahead log of every raw
signed transaction the chain accepted (``txlog.bin``: length, CRC32, bytes; fsynced
per transaction). Opening the chain replays the log from the fixed genesis (eth-tester's
deterministic dev accounts), which rebuilds exactly the same state: same nonces,
balances, contract addresses and storage. Block hashes and timestamps differ after a
replay; nothing in shoal's contracts reads them. A torn last record (crash mid-write)
is dropped, since the transaction it held was never acknowledged.

eth-tester answers ``eth_getLogs`` by scanning every block, which slows quadratically
(DESIGN.md measured 46 s for 500 events). This chain keeps its own log index in SQLite
and answers ``eth_getLogs`` from it, linear in the logs returned.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.backends.pyevm.main import get_default_account_keys
from web3 import EthereumTesterProvider
from web3.types import RPCEndpoint, RPCResponse

log = logging.getLogger(__name__)

TXLOG_NAME = "txlog.bin"
_RECORD = struct.Struct(">II")  # length, crc32
# A raw transaction larger than this is corrupt (the biggest shoal tx, a 256-peer
# anchor, is ~17 KiB; Ethereum clients cap txs at 128 KiB).
MAX_RAW_TX_BYTES = 128 * 1024

DEV_ACCOUNTS = 10


def dev_private_keys() -> list[bytes]:
    """The dev chain's funded accounts (eth-tester's fixed test keys; dev use only)."""
    return [k.to_bytes() for k in get_default_account_keys()[:DEV_ACCOUNTS]]


def read_txlog(path: Path) -> Iterator[bytes]:
    """Whole records of a tx log; stops at the first torn or corrupt record."""
    if not path.exists():
        return
    data = path.read_bytes()
    off = 0
    while off + _RECORD.size <= len(data):
        n, crc = _RECORD.unpack_from(data, off)
        body = data[off + _RECORD.size : off + _RECORD.size + n]
        if n > MAX_RAW_TX_BYTES or len(body) != n or zlib.crc32(body) != crc:
            log.warning("tx log %s: dropping a torn record at byte %d", path, off)
            break
        yield body
        off += _RECORD.size + n


class DevChain(EthereumTesterProvider):
    """An eth-tester provider that persists its transactions and indexes its logs."""

    def __init__(self, data_dir: str | Path | None = None) -> None:
        super().__init__(EthereumTester(PyEVMBackend()))
        self._lock = threading.RLock()
        self._index = sqlite3.connect(":memory:", check_same_thread=False)
        self._index.execute(
            "CREATE TABLE logs (block INTEGER, idx INTEGER, address TEXT, topic0 TEXT,"
            " topic1 TEXT, topic2 TEXT, body TEXT, PRIMARY KEY (block, idx))"
        )
        self._index.execute("CREATE INDEX logs_by_topic ON logs (address, topic0, block)")
        self._log_fd: int | None = None
        self.path: Path | None = None
        if data_dir is not None:
            self.path = Path(data_dir) / TXLOG_NAME
            self.path.parent.mkdir(parents=True, exist_ok=True)
            replayed = self._replay()
            # Truncate a torn tail so new records are not appended after garbage.
            good = sum(_RECORD.size + len(r) for r in read_txlog(self.path))
            self._log_fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            os.ftruncate(self._log_fd, good)
            os.lseek(self._log_fd, good, os.SEEK_SET)
            log.info("dev chain: replayed %d transactions from %s", replayed, self.path)

    def close(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None

    def _replay(self) -> int:
        assert self.path is not None
        n = 0
        for raw in read_txlog(self.path):
            resp = super().make_request(RPCEndpoint("eth_sendRawTransaction"), ["0x" + raw.hex()])
            if "error" in resp:
                raise RuntimeError(f"dev chain replay failed at tx {n}: {resp['error']}")
            self._index_tx(str(resp["result"]))
            n += 1
        return n

    def _append(self, raw: bytes) -> None:
        if self._log_fd is None:
            return
        os.write(self._log_fd, _RECORD.pack(len(raw), zlib.crc32(raw)) + raw)
        os.fsync(self._log_fd)

    def _index_tx(self, tx_hash: str) -> None:
        receipt = super().make_request(RPCEndpoint("eth_getTransactionReceipt"), [tx_hash])
        for lg in receipt["result"]["logs"]:
            topics = [*list(lg["topics"]), None, None, None]
            self._index.execute(
                "INSERT INTO logs VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    lg["block_number"], lg["log_index"], str(lg["address"]).lower(),
                    topics[0], topics[1], topics[2], json.dumps(lg),
                ),
            )  # fmt: skip

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        with self._lock:
            if method == "eth_getLogs":
                return self._get_logs(params[0] if params else {})
            resp = super().make_request(method, params)
            if method == "eth_sendRawTransaction" and "error" not in resp:
                raw = params[0]
                raw_bytes = bytes.fromhex(raw[2:]) if isinstance(raw, str) else bytes(raw)
                # Durable before the caller hears "accepted".
                self._append(raw_bytes)
                self._index_tx(str(resp["result"]))
            return resp

    def _block(self, v: Any, missing: str) -> int:
        """A block number from a filter field (int, hex, or a tag; ``missing`` if absent)."""
        v = missing if v is None else v
        if v == "earliest":
            return 0
        if v in ("latest", "pending", "safe", "finalized"):
            assert self.ethereum_tester is not None
            return int(self.ethereum_tester.get_block_by_number("latest")["number"])
        return int(v, 16) if isinstance(v, str) else int(v)

    def _get_logs(self, flt: dict[str, Any]) -> RPCResponse:
        lo = self._block(flt.get("from_block", flt.get("fromBlock")), "earliest")
        hi = self._block(flt.get("to_block", flt.get("toBlock")), "latest")
        sql = "SELECT body FROM logs WHERE block BETWEEN ? AND ?"
        args: list[Any] = [lo, hi]
        addr = flt.get("address")
        if addr:
            addrs = [addr] if isinstance(addr, str) else list(addr)
            sql += f" AND address IN ({','.join('?' * len(addrs))})"
            args += [str(a).lower() for a in addrs]
        topics = list(flt.get("topics") or [])
        if any(t is not None for t in topics[3:]):
            return {
                "jsonrpc": "2.0",
                "id": 0,
                "error": {"code": -32602, "message": "topic3 filters are not indexed"},
            }
        for i, t in enumerate(topics[:3]):
            if t is None:
                continue
            opts = [t] if isinstance(t, str) else list(t)
            sql += f" AND topic{i} IN ({','.join('?' * len(opts))})"
            args += [str(o).lower() for o in opts]
        rows = self._index.execute(sql + " ORDER BY block, idx", args).fetchall()
        return {"jsonrpc": "2.0", "id": 0, "result": [json.loads(r[0]) for r in rows]}
