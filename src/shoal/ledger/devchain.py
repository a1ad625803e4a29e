"""The embedded development chain: eth-tester + py-evm, persisted to the data dir.

py-evm keeps state in memory only, so persistence is a write-ahead log of every raw
signed transaction the chain accepted (``txlog.bin``: length, CRC32, bytes; fsynced
per transaction). Opening the chain replays the log from the fixed genesis (eth-tester's
deterministic dev accounts), which rebuilds exactly the same state: same nonces,
balances, contract addresses and storage. Block hashes and timestamps differ after a
replay; nothing in shoal's contracts reads them. A torn last record (crash mid-write)
is dropped, since the transaction it held was never acknowledged.

Replaying costs one transaction execution per stored transaction, so a clean close
also writes a snapshot (``state.snapshot``, msgpack, no pickle: py-evm's key-value
store plus the log index) naming how many log records, and which bytes (SHA-256),
it covers. Opening loads a snapshot only if the log still starts with exactly those
bytes, then replays the records after it; otherwise it replays everything. A reader
that trusts nothing in the directory and must not change it (``shoal verify``) opens
it ``readonly``: full replay, no snapshot read or written, the log left as it is.

eth-tester answers ``eth_getLogs`` by scanning every block, which slows quadratically
(DESIGN.md measured 46 s for 500 events). This chain keeps its own log index in SQLite
and answers ``eth_getLogs`` from it, linear in the logs returned.
"""

from __future__ import annotations

import hashlib
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

import msgpack
from eth.db.atomic import AtomicDB
from eth.db.backends.memory import MemoryDB
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.backends.pyevm.main import get_default_account_keys
from web3 import EthereumTesterProvider
from web3.types import RPCEndpoint, RPCResponse

log = logging.getLogger(__name__)

TXLOG_NAME = "txlog.bin"
SNAPSHOT_NAME = "state.snapshot"
SNAPSHOT_FORMAT = 1
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

    def __init__(self, data_dir: str | Path | None = None, readonly: bool = False) -> None:
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
        self.records = 0  # transactions in the log
        self._snapshot_records = 0
        self.loaded_snapshot = False
        if data_dir is not None:
            self.path = Path(data_dir) / TXLOG_NAME
            self.path.parent.mkdir(parents=True, exist_ok=True)
            records = list(read_txlog(self.path))
            skip = 0 if readonly else self._load_snapshot(records)
            replayed = self._replay(records[skip:])
            self.records = len(records)
            if readonly:
                return
            # Truncate a torn tail so new records are not appended after garbage.
            good = sum(_RECORD.size + len(r) for r in records)
            self._log_fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            os.ftruncate(self._log_fd, good)
            os.lseek(self._log_fd, good, os.SEEK_SET)
            log.info("dev chain: %d transactions from a snapshot, %d replayed, from %s",
                     skip, replayed, self.path)  # fmt: skip

    def close(self) -> None:
        """Close the log; write a snapshot if the log grew since the last one."""
        if self._log_fd is None:
            return
        os.close(self._log_fd)
        self._log_fd = None
        if self.path is not None and self.records > self._snapshot_records:
            with self._lock:
                self._write_snapshot()

    def _snapshot_path(self) -> Path:
        assert self.path is not None
        return self.path.parent / SNAPSHOT_NAME

    def _kv(self) -> dict[bytes, bytes]:
        assert self.ethereum_tester is not None
        kv: dict[bytes, bytes] = self.ethereum_tester.backend.chain.chaindb.db.wrapped_db.kv_store
        return kv

    def _write_snapshot(self) -> None:
        assert self.path is not None
        data = self.path.read_bytes()
        covered = sum(_RECORD.size + len(r) for r in read_txlog(self.path))
        rows = self._index.execute("SELECT * FROM logs ORDER BY block, idx").fetchall()
        doc = {
            "format": SNAPSHOT_FORMAT, "records": self.records, "bytes": covered,
            "sha256": hashlib.sha256(data[:covered]).hexdigest(),
            "kv": list(self._kv().items()), "logs": [list(r) for r in rows],
        }  # fmt: skip
        path = self._snapshot_path()
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(msgpack.packb(doc, use_bin_type=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._snapshot_records = self.records
        log.info("dev chain: snapshot of %d transactions at %s", self.records, path)

    def _load_snapshot(self, records: list[bytes]) -> int:
        """Load the snapshot if it matches the log's first records; returns how many."""
        path = self._snapshot_path()
        if not path.exists():
            return 0
        try:
            doc = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)
            n, covered = int(doc["records"]), int(doc["bytes"])
            assert self.path is not None
            prefix = self.path.read_bytes()[:covered]
            ok = (
                doc["format"] == SNAPSHOT_FORMAT and n <= len(records)
                and sum(_RECORD.size + len(r) for r in records[:n]) == covered
                and hashlib.sha256(prefix).hexdigest() == doc["sha256"]
            )  # fmt: skip
            if not ok:
                log.warning("dev chain: snapshot %s does not match the tx log; replaying", path)
                return 0
            assert self.ethereum_tester is not None
            backend = self.ethereum_tester.backend
            kv = {bytes(k): bytes(v) for k, v in doc["kv"]}
            rows = [tuple(r) for r in doc["logs"]]
            with self._index:  # one transaction: all rows or none
                self._index.executemany("INSERT INTO logs VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            fresh = backend.chain
            try:
                backend.chain = type(fresh)(AtomicDB(MemoryDB(kv)))
            except Exception:
                backend.chain = fresh
                self._index.execute("DELETE FROM logs")
                raise
        except Exception as exc:  # any damage means: ignore it, replay from genesis
            log.warning("dev chain: unusable snapshot %s (%s); replaying", path, exc)
            self._index.execute("DELETE FROM logs")
            return 0
        self._snapshot_records = n
        self.loaded_snapshot = True
        return n

    def _replay(self, records: list[bytes]) -> int:
        for n, raw in enumerate(records):
            resp = super().make_request(RPCEndpoint("eth_sendRawTransaction"), ["0x" + raw.hex()])
            if "error" in resp:
                raise RuntimeError(f"dev chain replay failed at tx {n}: {resp['error']}")
            self._index_tx(str(resp["result"]))
        return len(records)

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
                self.records += 1
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
