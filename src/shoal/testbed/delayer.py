"""The NFQUEUE delay holder: where the kernel has no netem, each receiver's INPUT hook
queues its packets here and we hand them back ``--delay-ms`` later.

Run inside a host's namespace by the testnet applier:
``python -m shoal.testbed.delayer --queue 0 --delay-ms 25``.

The delay is constant, so packets leave in arrival order: a FIFO of (release time,
packet) is all the scheduling needed. Only packet metadata is copied from the kernel.
"""

from __future__ import annotations

import argparse
import logging
import select
import signal
import sys
import time
from collections import deque
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

# Packets held at once. At 100 Mbit/s and 25 ms, ~220 full frames are in flight per
# direction; the kernel drops beyond this, like a full router queue.
MAX_HELD = 8192
# Kernel -> us socket buffer: bursts of queued packets wait here while we sleep.
SOCK_BYTES = 8 * 1024 * 1024
READY_LINE = "delayer ready"


class Delayer:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.held: deque[tuple[float, Any]] = deque()
        self.stopping = False
        self.passed = 0

    def on_packet(self, pkt: Any) -> None:
        self.held.append((time.monotonic() + self.delay_s, pkt))

    def release_due(self) -> None:
        now = time.monotonic()
        held = self.held
        while held and held[0][0] <= now:
            held.popleft()[1].accept()
            self.passed += 1

    def run(self, queue_num: int) -> None:
        from netfilterqueue import COPY_META, NetfilterQueue

        nfq = NetfilterQueue()
        nfq.bind(queue_num, self.on_packet, max_len=MAX_HELD, mode=COPY_META, sock_len=SOCK_BYTES)
        fd = nfq.get_fd()
        print(READY_LINE, flush=True)
        try:
            while not self.stopping:
                wait = self.held[0][0] - time.monotonic() if self.held else 0.5
                readable, _, _ = select.select([fd], [], [], max(0.0, wait))
                if readable:
                    nfq.run(block=False)
                self.release_due()
        finally:
            for _, pkt in self.held:
                pkt.accept()
            nfq.unbind()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--queue", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, required=True)
    args = ap.parse_args(argv)
    if not 0 <= args.delay_ms <= 10_000:
        ap.error("--delay-ms must be in [0, 10000]")
    logging.basicConfig(level=logging.INFO)
    d = Delayer(args.delay_ms / 1000.0)

    def stop(_sig: int, _frame: FrameType | None) -> None:
        d.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    d.run(args.queue)
    log.info("delayer stopped after %d packets", d.passed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
