"""``shoal verify``: prove a checkpoint's lineage from data anyone can check.

checkpoint file -> its model hash -> the round-aggregate entry that records it ->
each contributor's signed update commitment (the feed heads it lists) -> the Merkle
root of those heads -> the on-chain anchor for that round.

Nothing read from disk is trusted: every feed in every feed file is re-verified from
its first entry (signatures, seq order, hash links), hashes are recomputed rather than
read from columns, and the chain is asked directly. The first mismatch stops the walk
and is reported by name (``LineageError.step``).
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from shoal.identity.keys import PeerId, verify
from shoal.ledger.chain import Ledger
from shoal.ledger.entry import Entry, EntryError, Kind, parse_header
from shoal.ledger.equivocation import InvalidProof, decode_proof
from shoal.ledger.feed import FeedError, FeedStore, check_feed
from shoal.ledger.merkle import feeds_root
from shoal.ledger.payloads import RoundAggregate, UpdateCommitment, payload_of

log = logging.getLogger(__name__)

FEED_FILE = "feed.sqlite"
# Feed files are looked for this many directories below the data dir (DIR/ledger/,
# DIR/node3/ledger/...), not in the whole tree.
FEED_SEARCH_DEPTH = 3


class LineageError(Exception):
    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message


@dataclass
class LineageReport:
    checkpoint: Path
    model_hash: str = ""
    round: int = -1
    run: str = ""
    contributors: list[tuple[PeerId, int, str]] = field(default_factory=list)
    feeds_root: str = ""
    anchor_tx: str = ""
    steps: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def ok(self, step: str, detail: str) -> None:
        self.steps.append((step, detail))


def find_feed_files(data_dir: Path) -> list[Path]:
    out = []
    for depth in range(FEED_SEARCH_DEPTH):
        out += sorted(data_dir.glob("/".join(["*"] * depth + [FEED_FILE])))
    return out


def _load_feeds(files: list[Path], report: LineageReport) -> dict[PeerId, dict[int, Entry]]:
    merged: dict[PeerId, dict[int, Entry]] = {}
    for path in files:
        try:
            _load_file(path, merged, report)
        except (sqlite3.DatabaseError, FeedError, ValueError) as exc:
            raise LineageError("feed", f"{path}: {exc}") from exc
    return merged


def _load_file(path: Path, merged: dict[PeerId, dict[int, Entry]], report: LineageReport) -> None:
    with FeedStore(path) as store:
        for author in store.authors():
            entries = store.entries(author)
            try:
                check_feed(entries)
            except FeedError as exc:
                raise LineageError("feed", f"{path}: {exc}") from exc
            index = store.stored_hashes(author)
            for e in entries:
                if index.get(e.seq) != e.hash:
                    raise LineageError(
                        "feed", f"{path}: entry {author.short()}#{e.seq}: stored hash "
                        "does not match its content",
                    )  # fmt: skip
            for e in entries:
                seen = merged.setdefault(author, {}).get(e.seq)
                if seen is not None and seen.hash != e.hash:
                    report.warnings.append(
                        f"{author.short()} equivocated at seq {e.seq} (two signed entries)"
                    )
                    continue
                merged[author][e.seq] = e
        for raw in store.proofs():
            try:
                p = decode_proof(raw)
                report.warnings.append(
                    f"equivocation proof held against {p.a.author.short()} at seq {p.a.seq}"
                )
            except InvalidProof as exc:
                report.warnings.append(f"{path}: an invalid equivocation proof: {exc}")


def verify_lineage(
    checkpoint: Path, feed_files: list[Path], chain: Ledger, run: str | None = None
) -> LineageReport:
    """Walk the lineage; raise LineageError at the first mismatch."""
    from shoal.training.checkpoint import CheckpointError, load_checkpoint

    report = LineageReport(checkpoint)
    try:
        ckpt = load_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise LineageError("checkpoint", str(exc)) from exc
    report.model_hash = ckpt.model_hash
    report.ok("checkpoint", f"file intact; model hash {ckpt.model_hash}")
    want = bytes.fromhex(ckpt.model_hash)

    if not feed_files:
        raise LineageError("feed", "no feed files found")
    feeds = _load_feeds(feed_files, report)
    n_entries = sum(len(v) for v in feeds.values())
    report.ok("feeds", f"{len(feeds)} feeds, {n_entries} entries, every signature and link valid")

    aggregates: list[tuple[Entry, RoundAggregate]] = []
    for entries in feeds.values():
        for e in entries.values():
            if e.kind != Kind.ROUND_AGGREGATE:
                continue
            p = payload_of(e)
            assert isinstance(p, RoundAggregate)
            if p.model_hash == want and (run is None or p.run == run):
                aggregates.append((e, p))
    if not aggregates:
        raise LineageError(
            "round-aggregate", f"no round-aggregate entry records model hash {ckpt.model_hash}"
        )
    rounds = {p.round for _, p in aggregates}
    if len(rounds) != 1:
        raise LineageError("round-aggregate", f"model hash claimed by rounds {sorted(rounds)}")
    agg_entry, agg = aggregates[0]
    versions = {p.feeds_root: (e, p) for e, p in aggregates}
    if len(versions) > 1:
        # Peers that missed a commitment record a smaller set; the anchored one counts.
        onchain = chain.anchor(agg.round)
        chosen = versions.get(onchain[0]) if onchain is not None else None
        if chosen is None:
            raise LineageError(
                "round-aggregate", f"peers recorded {len(versions)} different contributor "
                f"sets for round {agg.round} and none matches the on-chain anchor",
            )  # fmt: skip
        agg_entry, agg = chosen
        others = sum(p.feeds_root != agg.feeds_root for _, p in aggregates)
        report.warnings.append(
            f"{others} peer(s) recorded a different contributor set for round {agg.round}"
        )
    report.round, report.run = agg.round, agg.run
    report.ok(
        "round-aggregate",
        f"round {agg.round} of run {agg.run!r}, recorded by {len(aggregates)} peer(s) "
        f"(e.g. {agg_entry.author.short()}#{agg_entry.seq})",
    )

    for c in agg.contributors:
        who = f"{c.author.short()}#{c.seq}"
        found = feeds.get(c.author, {}).get(c.seq)
        if found is None:
            raise LineageError("commitment", f"commitment {who} is missing from every feed")
        e = found
        if e.hash != c.entry_hash:
            raise LineageError(
                "commitment", f"commitment {who} hashes to {e.hash.hex()[:16]}, aggregate "
                f"lists {c.entry_hash.hex()[:16]}",
            )  # fmt: skip
        try:
            p = payload_of(e)
        except EntryError as exc:
            raise LineageError("commitment", f"{who}: {exc}") from exc
        if not isinstance(p, UpdateCommitment):
            raise LineageError("commitment", f"entry {who} is a {e.kind.name}, not a commitment")
        if p.run != agg.run or p.round != agg.round:
            raise LineageError(
                "commitment",
                f"commitment {who} is for run {p.run!r} round {p.round}, aggregate is "
                f"round {agg.round} (replayed or stale)",
            )
        if p.samples != c.samples:
            raise LineageError("commitment", f"commitment {who} samples {p.samples} != {c.samples}")
        report.contributors.append((c.author, p.samples, p.delta_hash.hex()))
    report.ok("commitments", f"{len(agg.contributors)} signed update commitments match")

    root = feeds_root(agg.contributors)
    if root != agg.feeds_root:
        raise LineageError("feeds-root", "the aggregate's feeds root does not match its heads")
    report.feeds_root = root.hex()
    report.ok("feeds-root", f"Merkle root of {len(agg.contributors)} feed heads {root.hex()}")

    onchain = chain.anchor(agg.round)
    if onchain is None:
        raise LineageError("anchor", f"round {agg.round} has no on-chain anchor")
    o_root, o_model, submitter = onchain
    if o_root != root:
        raise LineageError(
            "anchor", f"on-chain feeds root for round {agg.round} is {o_root.hex()}, the "
            f"lineage gives {root.hex()}",
        )  # fmt: skip
    if o_model != want:
        raise LineageError(
            "anchor", f"on-chain model hash for round {agg.round} is {o_model.hex()}, the "
            f"checkpoint's is {ckpt.model_hash}",
        )  # fmt: skip
    for c in agg.contributors:
        if chain.round_credit(agg.round, c.author) != c.samples:
            raise LineageError("anchor", f"on-chain credit of {c.author.short()} differs")
        if chain.is_banned(c.author):
            report.warnings.append(f"contributor {c.author.short()} is banned on-chain")
    report.ok("anchor", f"round {agg.round} anchored on-chain by {submitter.short()}")
    report.warnings += check_onchain_proofs(chain)
    return report


def check_onchain_proofs(chain: Ledger) -> list[str]:
    """Re-check every equivocation proof the contract accepted. The contract checks
    proofs only structurally (no Ed25519 in the EVM), so a proof whose signatures do
    not verify is a false accusation; it is reported, naming the reporter."""
    out = []
    for ev in chain.equivocation_events():
        ok = True
        for header, sig in ((ev.header_a, ev.sig_a), (ev.header_b, ev.sig_b)):
            try:
                author, _, _ = parse_header(header)
            except (EntryError, ValueError):
                ok = False
                continue
            ok = ok and author == ev.peer and verify(author, sig, header)
        if ok:
            out.append(f"{ev.peer.short()} was banned on-chain for equivocation (proof valid)")
        else:
            out.append(
                f"FALSE equivocation proof on-chain: {ev.reporter.short()} had "
                f"{ev.peer.short()} banned with signatures that do not verify"
            )
    return out
