"""Feeds: durable appends, verification of every entry, equivocation proofs."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.ledger.entry import GENESIS_PREV, EntryError, Kind, sign_entry
from shoal.ledger.equivocation import EquivocationProof, InvalidProof, decode_proof
from shoal.ledger.feed import FeedError, FeedStore, Ingested, check_feed
from shoal.ledger.payloads import JoinedRun, UpdateCommitment, encode_payload

from .helpers import digest, ident

A, B = ident(1), ident(2)


def test_append_chains_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "feed.sqlite"
    with FeedStore(path) as s:
        e0 = s.append(A, JoinedRun("r"), now_ms=10)
        e1 = s.append(A, UpdateCommitment("r", 0, digest(1), 5), now_ms=5)  # clock stepped back
        assert (e0.seq, e1.seq, e1.prev_hash) == (0, 1, e0.hash)
        assert e1.timestamp_ms == 10
        mode = s._db.execute("PRAGMA journal_mode").fetchone()[0]
        sync = s._db.execute("PRAGMA synchronous").fetchone()[0]
        assert (mode, sync) == (b"wal", 2)  # 2 = FULL
    with FeedStore(path) as s:
        got = s.entries(A.peer_id)
        assert got == [e0, e1]
        check_feed(got)


def test_ingest_refuses_gaps_forks_bad_signatures_and_time_travel(tmp_path: Path) -> None:
    with FeedStore(tmp_path / "a") as mine, FeedStore(tmp_path / "b") as other:
        e = [mine.append(A, JoinedRun(f"r{i}"), now_ms=100 + i) for i in range(3)]
        with pytest.raises(FeedError, match="next seq is 0"):
            other.ingest(e[1])
        assert other.ingest(e[0]) == (Ingested.APPENDED, None)
        assert other.ingest(e[0]) == (Ingested.DUPLICATE, None)
        forged = sign_entry(A, 1, b"\x07" * 32, Kind.JOINED_RUN, 200, b"x")
        with pytest.raises(FeedError, match="prev_hash does not match"):
            other.ingest(forged)
        back = sign_entry(A, 1, e[0].hash, Kind.JOINED_RUN, 1, encode_payload(JoinedRun("x")))
        with pytest.raises(FeedError, match="back in time"):
            other.ingest(back)
        stolen = sign_entry(B, 1, e[0].hash, Kind.JOINED_RUN, 200, b"x")
        resigned = type(stolen)(A.peer_id, 1, e[0].hash, Kind.JOINED_RUN, 200, b"x",
                                stolen.signature)  # fmt: skip
        with pytest.raises(EntryError, match="bad signature"):
            other.ingest(resigned)
        assert other.entries(A.peer_id) == [e[0]]


def test_equivocation_is_detected_and_the_proof_is_portable(tmp_path: Path) -> None:
    with FeedStore(tmp_path / "a") as s:
        e0 = s.append(A, JoinedRun("r"), now_ms=1)
        twin = sign_entry(A, 0, GENESIS_PREV, Kind.JOINED_RUN, 1, encode_payload(JoinedRun("z")))
        result, proof = s.ingest(twin)
        assert result is Ingested.EQUIVOCATION and proof is not None
        assert s.entries(A.peer_id) == [e0]  # the feed keeps its first entry
        stored = s.proofs()
        assert stored == [proof.encode()]
    again = decode_proof(stored[0])
    assert {again.a.hash, again.b.hash} == {e0.hash, twin.hash}
    with pytest.raises(InvalidProof, match="same entry"):
        EquivocationProof(e0, e0).check()
    other_seq = sign_entry(A, 1, e0.hash, Kind.JOINED_RUN, 1, b"")
    with pytest.raises(InvalidProof, match="different seqs"):
        EquivocationProof(e0, other_seq).check()
    by_b = sign_entry(B, 0, GENESIS_PREV, Kind.JOINED_RUN, 1, b"")
    with pytest.raises(InvalidProof, match="different authors"):
        EquivocationProof(e0, by_b).check()
    with pytest.raises(InvalidProof):
        decode_proof(b"\x92\xc4\x01a\xc4\x01b")


def test_check_feed_names_the_broken_entry(tmp_path: Path) -> None:
    with FeedStore(tmp_path / "a") as s:
        es = [s.append(A, JoinedRun(f"r{i}"), now_ms=i) for i in range(4)]
    check_feed(es)
    with pytest.raises(FeedError, match="#2 found at position 1"):
        check_feed([es[0], es[2], es[1], es[3]])
    tampered = type(es[2])(A.peer_id, 2, es[2].prev_hash, es[2].kind, es[2].timestamp_ms,
                           b"evil", es[2].signature)  # fmt: skip
    with pytest.raises(FeedError, match="#2: signature"):
        check_feed([es[0], es[1], tampered, es[3]])
