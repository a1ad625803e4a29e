"""``shoal verify`` on a real lineage, and every tamper the issue names."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.ledger.entry import Kind
from shoal.ledger.payloads import UpdateCommitment, payload_of
from shoal.ledger.run_ledger import CommitmentRejected, NotAdmitted, RunLedger
from shoal.ledger.verify import LineageError, find_feed_files, verify_lineage

from .helpers import ident
from .lineage import RUN, Lineage, build_lineage


@pytest.fixture
def lineage(tmp_path: Path) -> Iterator[Lineage]:
    lin = build_lineage(tmp_path)
    yield lin
    lin.close()


def _verify(lin: Lineage, ckpt: Path | None = None) -> None:
    verify_lineage(ckpt or lin.checkpoints[-1], find_feed_files(lin.root), lin.chains[0])


def _fails(lin: Lineage, step: str, match: str = "", ckpt: Path | None = None) -> str:
    with pytest.raises(LineageError) as info:
        _verify(lin, ckpt)
    assert info.value.step == step, str(info.value)
    assert match in info.value.message
    return info.value.message


def test_untouched_lineage_verifies(lineage: Lineage) -> None:
    assert sorted(find_feed_files(lineage.root)) == sorted(lineage.feed_files())
    for ckpt in lineage.checkpoints:
        report = verify_lineage(ckpt, find_feed_files(lineage.root), lineage.chains[0])
        assert len(report.contributors) == 3 and not report.warnings
        assert [s for s, _ in report.steps] == [
            "checkpoint", "feeds", "round-aggregate", "commitments", "feeds-root", "anchor",
        ]  # fmt: skip
    assert report.round == 1


def _commitment_row(lin: Lineage) -> tuple[Path, bytes, int]:
    """node1's round-1 commitment, as stored in node0's replica of node1's feed."""
    node1 = lin.ids[1].peer_id
    for e in lin.ledgers[0].store.entries(node1):
        p = payload_of(e)
        if isinstance(p, UpdateCommitment) and p.round == 1:
            return lin.ledgers[0].store.path, node1.raw, e.seq
    raise AssertionError("no commitment")


@pytest.mark.parametrize(
    "column", ["author", "seq", "hash", "prev", "kind", "ts", "payload", "sig"]
)
def test_any_byte_of_a_feed_entry(lineage: Lineage, column: str) -> None:
    path, author, seq = _commitment_row(lineage)
    db = sqlite3.connect(path, isolation_level=None)
    (orig,) = db.execute(f"SELECT {column} FROM entries WHERE author=? AND seq=?",
                         (author, seq)).fetchone()  # fmt: skip
    if isinstance(orig, int):
        variants: list[object] = [orig ^ 1, orig + 1]
        if column == "seq":  # a neighbour's seq would collide with the primary key
            variants = [orig + 1000, 2**40]
        if column == "kind":
            variants = [k for k in (1, 3, 4) if k != orig]
    else:
        variants = []
        for i in range(len(orig)):
            b = bytearray(orig)
            b[i] ^= 0x01
            variants.append(bytes(b))
    for v in variants:
        db.execute(f"UPDATE entries SET {column}=? WHERE author=? AND seq=?",
                   (v, author if column != "author" else orig, seq))  # fmt: skip
        where = (v if column == "author" else author, v if column == "seq" else seq)
        msg = _fails(lineage, "feed", str(path))
        assert "#" in msg, msg  # names the entry
        db.execute(f"UPDATE entries SET {column}=? WHERE author=? AND seq=?", (orig, *where))
    db.close()
    _verify(lineage)  # restored: verifies again, so each failure above was the flip


def test_reordered_feed_entries(lineage: Lineage) -> None:
    path, author, seq = _commitment_row(lineage)
    db = sqlite3.connect(path, isolation_level=None)
    # Swap two neighbouring entries' positions.
    db.execute("UPDATE entries SET seq=-1 WHERE author=? AND seq=?", (author, seq))
    db.execute("UPDATE entries SET seq=? WHERE author=? AND seq=?", (seq, author, seq - 1))
    db.execute("UPDATE entries SET seq=? WHERE author=? AND seq=-1", (seq - 1, author))
    db.close()
    _fails(lineage, "feed", f"#{seq - 1}")


def test_every_byte_of_the_checkpoint(lineage: Lineage, tmp_path: Path) -> None:
    data = lineage.checkpoints[-1].read_bytes()
    bad = tmp_path / "bad.safetensors"
    steps = set()
    for i in range(len(data)):
        b = bytearray(data)
        b[i] ^= 0x01
        bad.write_bytes(bytes(b))
        with pytest.raises(LineageError) as info:
            _verify(lineage, bad)
        steps.add(info.value.step)
    assert steps == {"checkpoint"}


def test_checkpoint_from_another_lineage(lineage: Lineage, tmp_path: Path) -> None:
    other = build_lineage(tmp_path / "other", rounds=3)
    try:
        _fails(lineage, "round-aggregate", "no round-aggregate entry", other.checkpoints[-1])
    finally:
        other.close()


def test_swapped_anchor(tmp_path: Path) -> None:
    lin = build_lineage(tmp_path, rounds=2, swap_anchors=True)
    try:
        _fails(lin, "anchor", "on-chain feeds root for round 1", lin.checkpoints[-1])
        _fails(lin, "anchor", "on-chain feeds root for round 0", lin.checkpoints[0])
    finally:
        lin.close()


def test_missing_commitment_feed(lineage: Lineage) -> None:
    # Only node2's own file, and it lacks nothing... drop node1's feed from every file.
    for lg in lineage.ledgers:
        lg.store._db.execute("DELETE FROM entries WHERE author=?", (lineage.ids[1].peer_id.raw,))
    _fails(lineage, "commitment", "missing from every feed")


def test_replayed_old_commitment_is_rejected(lineage: Lineage) -> None:
    lg = lineage.ledgers[0]
    other = lineage.ids[1].peer_id
    old = lg.commitment_of(other, 0)
    assert old is not None
    with pytest.raises(CommitmentRejected, match="round 0, not 2"):
        lg.accept_commitment(old, 2)
    # Same round again: the commitment was already used in round 0's aggregate.
    with pytest.raises(CommitmentRejected, match="already used"):
        lg.accept_commitment(old, 0)
    # ... also after a restart (the used set is rebuilt from the feed).
    again = RunLedger(lg.identity, lg.store, lg.chain, RUN)
    with pytest.raises(CommitmentRejected, match="already used"):
        again.accept_commitment(old, 0)
    joined = lg.store.entries(other)[0]
    assert joined.kind == Kind.JOINED_RUN
    with pytest.raises(CommitmentRejected, match="not a commitment"):
        lg.accept_commitment(joined, 2)


def test_unadmitted_peers_are_refused(lineage: Lineage, tmp_path: Path) -> None:
    from shoal.ledger.feed import FeedStore

    outsider = ident(50)
    store = FeedStore(tmp_path / "outsider.sqlite")
    lg = RunLedger(outsider, store, lineage.chains[0], RUN)
    with pytest.raises(NotAdmitted):
        lg.join()
    c = lg.commit_update(2, b"\x01" * 32, 5)
    e = store.get(c.author, c.seq)
    assert e is not None
    mine = lineage.ledgers[0]
    mine.store.ingest(e)
    with pytest.raises(CommitmentRejected, match="not admitted"):
        mine.accept_commitment(e, 2)
    store.close()


def _shoal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", *args],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_cli_verify_after_the_writers_exit(tmp_path: Path) -> None:
    lin = build_lineage(tmp_path, rounds=2)
    lin.close()  # everything below reads only what is on disk
    ok = _shoal("verify", str(lin.checkpoints[-1]), "--data-dir", str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert "VERIFIED" in ok.stdout and "anchor" in ok.stdout
    path = tmp_path / "node2" / "ledger" / "feed.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE entries SET payload = payload || x'00' WHERE seq = 1")
    db.close()
    bad = _shoal("verify", str(lin.checkpoints[-1]), "--data-dir", str(tmp_path))
    assert bad.returncode == 1
    assert "VERIFY FAILED at feed" in bad.stderr and "signature" in bad.stderr
    missing = _shoal("verify", str(tmp_path / "nope.safetensors"), "--data-dir", str(tmp_path))
    assert missing.returncode == 1


def test_cli_verify_over_chain_rpc(tmp_path: Path) -> None:
    """`--chain-rpc URL`: anchors are read over JSON-RPC (here `shoal chain` serving
    the lineage's persisted chain), not from the data dir's chain files."""
    import os
    import signal

    lin = build_lineage(tmp_path, rounds=1)
    lin.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "chain", "--data-dir", str(tmp_path),
         "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        ok = _shoal("verify", str(lin.checkpoints[0]), "--data-dir", str(tmp_path),
                    "--chain-rpc", url, "--json")  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        import json

        doc = json.loads(ok.stdout)
        assert doc["ok"] and doc["round"] == 0 and len(doc["contributors"]) == 3
        wrong = _shoal("verify", str(lin.checkpoints[0]), "--data-dir", str(tmp_path),
                       "--chain-rpc", "http://127.0.0.1:9", "--json")  # fmt: skip
        assert wrong.returncode == 1 and json.loads(wrong.stdout)["step"] == "setup"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_peer_that_missed_a_commitment_does_not_break_verify(lineage: Lineage) -> None:
    """node2 records round 1 without node1's commitment (it did not arrive in time);
    the anchored set (all three) is the lineage, node2's smaller set is a warning."""
    from shoal.ledger.payloads import RoundAggregate

    lg = lineage.ledgers[2]
    (full,) = [
        payload_of(e) for e in lg.store.entries(lg.peer_id)
        if e.kind == Kind.ROUND_AGGREGATE and payload_of(e).round == 1  # type: ignore[union-attr]
    ]  # fmt: skip
    assert isinstance(full, RoundAggregate)
    partial = [c for c in full.contributors if c.author != lineage.ids[1].peer_id]
    lg._used.difference_update(c.entry_hash for c in partial)
    lg.record_round(1, full.model_hash, partial)
    report = verify_lineage(lineage.checkpoints[-1], find_feed_files(lineage.root),
                            lineage.chains[0])  # fmt: skip
    assert len(report.contributors) == 3
    assert any("different contributor set" in w for w in report.warnings)
