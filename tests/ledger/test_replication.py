"""The replication core, driven by an in-memory message loop (no sockets)."""

from __future__ import annotations

from pathlib import Path

from shoal.effects import Emit
from shoal.identity.keys import Identity
from shoal.ledger.entry import GENESIS_PREV, Kind, sign_entry
from shoal.ledger.feed import FeedStore
from shoal.ledger.limits import MAX_ENTRIES_PER_REPLY
from shoal.ledger.messages import LedgerEntries
from shoal.ledger.payloads import JoinedRun, encode_payload
from shoal.ledger.replication import (
    EntriesIngested,
    EntryRefused,
    EquivocationDetected,
    ReplicationCore,
)
from shoal.wire.contact import Contact

from .helpers import ident, pump


def _contact(i: Identity, port: int) -> Contact:
    return Contact(i.peer_id, f"127.0.0.1:{port}")


def test_three_peers_converge_across_many_batches(tmp_path: Path) -> None:
    ids = [ident(i + 1) for i in range(3)]
    stores = [FeedStore(tmp_path / f"{i}.sqlite") for i in range(3)]
    n = 2 * MAX_ENTRIES_PER_REPLY + 3
    for ident_, store in zip(ids, stores, strict=True):
        for k in range(n):
            store.append(ident_, JoinedRun(f"r{k}"), now_ms=k)
    cores = {_contact(i, 9000 + k): ReplicationCore(s) for k, (i, s) in
             enumerate(zip(ids, stores, strict=True))}  # fmt: skip
    events = pump(cores)
    assert any(isinstance(e, EntriesIngested) for e in events)
    for s in stores:
        assert {h.seq for h in s.heads()} == {n - 1}
        for i in ids:
            assert s.entries(i.peer_id) == stores[ids.index(i)].entries(i.peer_id)
    for s in stores:
        s.close()


def test_equivocation_spreads_as_a_proof(tmp_path: Path) -> None:
    liar, honest1, honest2 = ident(7), ident(8), ident(9)
    s1, s2, s3 = (FeedStore(tmp_path / f"{i}") for i in range(3))
    # The liar shows one history to honest1 and another to honest2.
    a = sign_entry(liar, 0, GENESIS_PREV, Kind.JOINED_RUN, 1, encode_payload(JoinedRun("a")))
    b = sign_entry(liar, 0, GENESIS_PREV, Kind.JOINED_RUN, 1, encode_payload(JoinedRun("b")))
    s1.ingest(a)
    s2.ingest(b)
    s3.append(honest2, JoinedRun("r"))
    cores = {
        _contact(honest1, 1): ReplicationCore(s1),
        _contact(honest2, 2): ReplicationCore(s2),
        _contact(ident(10), 3): ReplicationCore(s3),
    }
    events = pump(cores)
    found = [e for e in events if isinstance(e, EquivocationDetected)]
    assert found, "nobody noticed the equivocation"
    assert {found[0].proof.a.hash, found[0].proof.b.hash} == {a.hash, b.hash}
    assert s1.proofs() and s2.proofs()


def test_forged_entries_are_refused_and_nothing_after_them_is_taken(tmp_path: Path) -> None:
    author = ident(3)
    src, dst = FeedStore(tmp_path / "src"), FeedStore(tmp_path / "dst")
    es = [src.append(author, JoinedRun(str(i)), now_ms=i) for i in range(3)]
    bad = bytearray(es[1].encode())
    bad[-1] ^= 1  # flip a signature bit
    core = ReplicationCore(dst)
    acts = core.on_message(
        _contact(author, 1), LedgerEntries((es[0].encode(), bytes(bad), es[2].encode()))
    )
    refused = [a.event for a in acts if isinstance(a, Emit) and isinstance(a.event, EntryRefused)]
    assert refused and "signature" in refused[0].reason
    assert dst.entries(author.peer_id) == [es[0]]
