"""Append-only feeds in SQLite: this peer's own feed and the replicas it holds.

Durability: WAL journal with ``synchronous=FULL``, so ``append`` returns only after
the commit is fsynced; an entry a caller saw acknowledged survives a SIGKILL or power
cut. Each append is one transaction, so a crash leaves the feed at the last whole
entry, never a torn one.

Every entry that comes in (from replication or a file) is checked: signature, hash
chain (seq is the next one, prev_hash is the hash of the entry before), non-decreasing
timestamps. A different signed entry at a seq we already hold is equivocation: the
pair is stored as a proof and returned.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from shoal.identity.keys import Identity, PeerId
from shoal.ledger.entry import GENESIS_PREV, Entry, EntryError, Kind, sign_entry
from shoal.ledger.equivocation import EquivocationProof
from shoal.ledger.payloads import KIND_OF, Payload, encode_payload

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    author BLOB NOT NULL, seq INTEGER NOT NULL, hash BLOB NOT NULL, prev BLOB NOT NULL,
    kind INTEGER NOT NULL, ts INTEGER NOT NULL, payload BLOB NOT NULL, sig BLOB NOT NULL,
    PRIMARY KEY (author, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_by_hash ON entries (hash);
CREATE TABLE IF NOT EXISTS equivocations (
    author BLOB NOT NULL, seq INTEGER NOT NULL, proof BLOB NOT NULL,
    PRIMARY KEY (author, seq)
) WITHOUT ROWID;
"""

_COLUMNS = "author, seq, prev, kind, ts, payload, sig"


F = TypeVar("F", bound=Callable[..., Any])


def _locked(fn: F) -> F:
    """One connection serves the node loop and the training thread; a transaction
    must never interleave with another thread's statements."""

    @functools.wraps(fn)
    def wrapper(self: FeedStore, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class FeedError(ValueError):
    """An entry was refused: it does not extend the author's feed."""


class Ingested(Enum):
    APPENDED = "appended"
    DUPLICATE = "duplicate"
    EQUIVOCATION = "equivocation"


@dataclass(frozen=True, slots=True)
class Head:
    author: PeerId
    seq: int
    hash: bytes


def _row_entry(row: tuple[object, ...]) -> Entry:
    author, seq, prev, kind, ts, payload, sig = row
    if not (
        isinstance(author, bytes) and len(author) == 32
        and all(isinstance(v, bytes) for v in (prev, payload, sig))
        and all(isinstance(v, int) for v in (seq, kind, ts))
        and kind in Kind._value2member_map_
    ):  # fmt: skip
        raise FeedError(f"entry #{seq!r}: a stored column has the wrong type or value")
    assert isinstance(seq, int) and isinstance(kind, int) and isinstance(ts, int)
    assert isinstance(prev, bytes) and isinstance(payload, bytes) and isinstance(sig, bytes)
    return Entry(PeerId(author), seq, prev, Kind(kind), ts, payload, sig)


class FeedStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per entry.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Columns a tamperer retyped to TEXT still come back as bytes, never a decode crash.
        self._db.text_factory = bytes
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so an acknowledged append is durable.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    @_locked
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> FeedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------
    @_locked
    def head(self, author: PeerId) -> Head | None:
        row = self._db.execute(
            "SELECT seq, hash FROM entries WHERE author=? ORDER BY seq DESC LIMIT 1",
            (author.raw,),
        ).fetchone()
        return None if row is None else Head(author, row[0], bytes(row[1]))

    @_locked
    def heads(self) -> list[Head]:
        rows = self._db.execute(
            "SELECT author, MAX(seq) FROM entries GROUP BY author ORDER BY author"
        ).fetchall()
        out = []
        for author, _ in rows:
            h = self.head(PeerId(bytes(author)))
            assert h is not None
            out.append(h)
        return out

    @_locked
    def get(self, author: PeerId, seq: int) -> Entry | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE author=? AND seq=?", (author.raw, seq)
        ).fetchone()
        return None if row is None else _row_entry(row)

    @_locked
    def by_hash(self, entry_hash: bytes) -> Entry | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE hash=?", (entry_hash,)
        ).fetchone()
        return None if row is None else _row_entry(row)

    @_locked
    def entries(self, author: PeerId, start: int = 0, limit: int = 2**62) -> list[Entry]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE author=? AND seq>=? ORDER BY seq LIMIT ?",
            (author.raw, start, limit),
        ).fetchall()
        return [_row_entry(r) for r in rows]

    @_locked
    def stored_hashes(self, author: PeerId) -> dict[int, bytes]:
        """The hash column (an index, not trusted by verifiers: they compare it)."""
        rows = self._db.execute("SELECT seq, hash FROM entries WHERE author=?", (author.raw,))
        return {seq: bytes(h) for seq, h in rows}

    @_locked
    def authors(self) -> list[PeerId]:
        rows = self._db.execute("SELECT DISTINCT author FROM entries ORDER BY author").fetchall()
        return [PeerId(bytes(r[0])) for r in rows]

    @_locked
    def proofs(self) -> list[bytes]:
        return [bytes(r[0]) for r in self._db.execute("SELECT proof FROM equivocations")]

    # -- writing ---------------------------------------------------------------
    @_locked
    def append(self, identity: Identity, payload: Payload, now_ms: int | None = None) -> Entry:
        """Sign ``payload`` as this peer's next entry and store it durably."""
        head = self.head(identity.peer_id)
        ts = int(time.time() * 1000) if now_ms is None else now_ms
        if head is not None:
            prev = self.get(identity.peer_id, head.seq)
            assert prev is not None
            ts = max(ts, prev.timestamp_ms)  # clocks step back; feeds never do
        seq = 0 if head is None else head.seq + 1
        entry = sign_entry(
            identity, seq, GENESIS_PREV if head is None else head.hash, KIND_OF[type(payload)],
            ts, encode_payload(payload),
        )  # fmt: skip
        result, _ = self.ingest(entry)
        assert result is Ingested.APPENDED
        return entry

    @_locked
    def ingest(self, entry: Entry) -> tuple[Ingested, EquivocationProof | None]:
        """Verify and store an entry from anyone. Raises FeedError/EntryError if refused."""
        if not entry.signature_ok():
            raise EntryError(f"bad signature on entry {entry.author.short()}#{entry.seq}")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result, proof = self._ingest_locked(entry)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return result, proof

    def _ingest_locked(self, entry: Entry) -> tuple[Ingested, EquivocationProof | None]:
        have = self.get(entry.author, entry.seq)
        if have is not None:
            if have.hash == entry.hash:
                return Ingested.DUPLICATE, None
            proof = EquivocationProof(have, entry)
            proof.check()
            self._db.execute(
                "INSERT OR IGNORE INTO equivocations VALUES (?, ?, ?)",
                (entry.author.raw, entry.seq, proof.encode()),
            )
            return Ingested.EQUIVOCATION, proof
        head = self.head(entry.author)
        want = 0 if head is None else head.seq + 1
        if entry.seq != want:
            raise FeedError(
                f"entry {entry.author.short()}#{entry.seq} does not follow the feed head "
                f"(next seq is {want})"
            )
        if head is None:
            if entry.prev_hash != GENESIS_PREV:
                raise FeedError(f"first entry of {entry.author.short()} has a non-zero prev_hash")
        else:
            if entry.prev_hash != head.hash:
                raise FeedError(
                    f"entry {entry.author.short()}#{entry.seq} prev_hash does not match "
                    f"entry #{head.seq}"
                )
            prev = self.get(entry.author, head.seq)
            assert prev is not None
            if entry.timestamp_ms < prev.timestamp_ms:
                raise FeedError(f"entry {entry.author.short()}#{entry.seq} goes back in time")
        self._db.execute(
            "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.author.raw, entry.seq, entry.hash, entry.prev_hash, int(entry.kind),
                entry.timestamp_ms, entry.payload, entry.signature,
            ),
        )  # fmt: skip
        return Ingested.APPENDED, None


def check_feed(entries: list[Entry]) -> None:
    """Check a whole feed read from storage: signatures, order and hash links.

    Raises FeedError naming the first bad entry. Used by ``shoal verify``, which
    trusts nothing it reads from disk.
    """
    prev = GENESIS_PREV
    for i, e in enumerate(entries):
        who = f"{e.author.short()}#{e.seq}"
        if e.seq != i:
            raise FeedError(f"entry {who} found at position {i}: entries are missing or reordered")
        if not e.signature_ok():
            raise FeedError(f"entry {who}: signature does not match its content")
        if e.prev_hash != prev:
            raise FeedError(f"entry {who}: prev_hash does not link to entry #{i - 1}")
        prev = e.hash
