"""Reusable byte buffers for the all-reduce's transient data, kept from one call to the next.

Why: first-touching fresh memory is expensive on this machine kind (page faults and
zeroing cost ~0.6 ms per MiB, measured; a VM makes each fault dear). A 64 MiB
all-reduce across 4 peers used to allocate ~190 MiB of transient buffers per peer
(received contributions, received result shards, the reduce's scratch, int8
payloads) and spent more CPU faulting them in than moving the bytes. Rounds repeat
with the same sizes, so the buffers one all-reduce releases are reused, already
mapped, by the next.

Rules:
- ``take(size)`` returns a ``bytearray`` of exactly ``size`` bytes whose contents are
  *stale* (whatever the last user left). Callers fill it completely before reading:
  bulk receive buffers are delivered only once every byte arrived.
- ``give(buf)`` only once nothing else can read or write ``buf``: a bulk stream still
  in flight keeps writing into its buffer, so such a buffer is dropped, not pooled.
- At most ``max_bytes`` stay cached, oldest first out; ``clear()`` frees them all
  (e.g. when a node stops training).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

# Enough for every transient of a ~200 MiB fp32 all-reduce in a group of 4 (incoming
# contributions, their early products and the result shards: ~3 (n-1)/n of the
# vector), while an idle node holds no more than this.
MAX_POOLED_BYTES = 512 * 1024 * 1024
# Buffers smaller than this come and go cheaply through malloc; pooling them only costs.
MIN_POOLED_BYTES = 256 * 1024


class BufferPool:
    """A bounded, thread-safe cache of byte buffers keyed by exact size."""

    def __init__(self, max_bytes: int = MAX_POOLED_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # id(buf) -> buf, in the order they were given back (oldest first)
        self._free: OrderedDict[int, bytearray] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def take(self, size: int) -> bytearray:
        """A buffer of exactly ``size`` bytes; its contents are stale, not zeroed."""
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if size >= MIN_POOLED_BYTES:
            with self._lock:
                for key, buf in self._free.items():
                    if len(buf) == size:
                        del self._free[key]
                        self._bytes -= size
                        self.hits += 1
                        return buf
                self.misses += 1
        return bytearray(size)

    def take_floats(self, count: int) -> tuple[torch.Tensor, bytearray]:
        """An fp32 tensor of ``count`` values over a pooled buffer (stale contents), and
        the buffer to give back once the tensor is no longer used."""
        buf = self.take(4 * count)
        if count == 0:
            return torch.empty(0, dtype=torch.float32), buf
        return torch.frombuffer(buf, dtype=torch.float32, count=count), buf

    def give(self, buf: bytearray) -> None:
        """Return ``buf`` for reuse. The caller guarantees nothing else uses it."""
        size = len(buf)
        if size < MIN_POOLED_BYTES or size > self.max_bytes:
            return
        with self._lock:
            if id(buf) in self._free:
                return  # given twice; keep one entry
            self._free[id(buf)] = buf
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._free.popitem(last=False)
                self._bytes -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._bytes = 0


# One per process: every all-reduce of this process shares it, so consecutive rounds
# (each a new AllReduce) find the previous round's buffers.
POOL = BufferPool()
