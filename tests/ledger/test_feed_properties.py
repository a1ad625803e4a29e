"""Property tests: whatever order, duplicates, forgeries or garbage arrive in, a
replica only ever holds a valid prefix of the author's feed, and loses nothing."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.ledger.entry import Entry, EntryError, Kind, decode_entry, sign_entry
from shoal.ledger.equivocation import InvalidProof, decode_proof
from shoal.ledger.feed import FeedError, FeedStore, check_feed
from shoal.ledger.messages import LEDGER_MESSAGES
from shoal.ledger.payloads import JoinedRun, encode_payload
from shoal.wire.codec import Codec, DecodeError

from .helpers import ident

AUTHOR = ident(5)
N = 8


def _source_feed() -> list[Entry]:
    with tempfile.TemporaryDirectory() as d, FeedStore(Path(d) / "src") as s:
        return [s.append(AUTHOR, JoinedRun(f"r{i}"), now_ms=i) for i in range(N)]


SOURCE = _source_feed()
TWIN = sign_entry(AUTHOR, 3, SOURCE[2].hash, Kind.JOINED_RUN, 3, encode_payload(JoinedRun("x")))


def _forged(i: int) -> Entry:
    e = SOURCE[i]
    return Entry(e.author, e.seq, e.prev_hash, e.kind, e.timestamp_ms, e.payload + b"!",
                 e.signature)  # fmt: skip


deliveries = st.lists(
    st.one_of(
        st.integers(0, N - 1).map(lambda i: ("good", i)),
        st.integers(0, N - 1).map(lambda i: ("forged", i)),
        st.just(("twin", 3)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(deliveries)
def test_replica_is_always_a_valid_prefix(order: list[tuple[str, int]]) -> None:
    """The replica holds a prefix of the author's real feed; if the author's twin at
    seq 3 arrived first, the replica follows that branch (it cannot know better), and
    the moment both seq-3 entries have been seen it holds the equivocation proof."""
    twin_branch = [*SOURCE[:3], TWIN]
    with tempfile.TemporaryDirectory() as d, FeedStore(Path(d) / "replica") as s:
        stored_max = -1
        expect_proof = False
        for kind, i in order:
            e = {"good": SOURCE[i], "forged": _forged(i), "twin": TWIN}[kind]
            held3 = s.get(AUTHOR.peer_id, 3)
            with contextlib.suppress(FeedError, EntryError):
                s.ingest(e)
            if held3 is not None and e.seq == 3 and kind != "forged" and e.hash != held3.hash:
                expect_proof = True
            got = s.entries(AUTHOR.peer_id)
            check_feed(got)
            assert len(got) - 1 >= stored_max, "an accepted entry disappeared"
            stored_max = len(got) - 1
            hashes = [x.hash for x in got]
            assert hashes in (
                [x.hash for x in SOURCE[: len(got)]],
                [x.hash for x in twin_branch[: len(got)]],
            ), "the replica holds something the author never signed in that order"
        assert bool(s.proofs()) == expect_proof


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_proof_and_message_decoders_never_crash(data: bytes) -> None:
    with contextlib.suppress(InvalidProof):
        decode_proof(data)
    with contextlib.suppress(DecodeError):
        Codec(LEDGER_MESSAGES).decode(data)
    with contextlib.suppress(EntryError):
        decode_entry(data)
