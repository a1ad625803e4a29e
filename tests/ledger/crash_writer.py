"""Child process for the crash test: append forever, print each acknowledged seq."""

from __future__ import annotations

import sys
from pathlib import Path

from shoal.ledger.feed import FeedStore
from shoal.ledger.payloads import UpdateCommitment

from .helpers import ident

if __name__ == "__main__":
    store = FeedStore(Path(sys.argv[1]))
    me = ident(42)
    while True:
        head = store.head(me.peer_id)
        n = 0 if head is None else head.seq + 1
        e = store.append(me, UpdateCommitment("crash", n, bytes(32), 1 + n))
        sys.stdout.write(f"{e.seq}\n")
        sys.stdout.flush()
