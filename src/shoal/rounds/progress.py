"""The progress record a peer publishes for a round.

Value: msgpack ``[samples, model_version, ready, addr]``. ``addr`` lets the peers
that read the record reach the publisher (the transport checks the key there); the
publisher itself comes from the record's verified signature, never from the value.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from shoal.rounds.messages import MAX_ROUND, MAX_SAMPLES
from shoal.wire.codec import MalformedMessage
from shoal.wire.fields import as_int, as_list, as_str

# Far below the DHT's 64 KiB record limit: four small fields.
MAX_PROGRESS_BYTES = 512


@dataclass(frozen=True, slots=True)
class Progress:
    samples: int
    model_version: int
    ready: bool
    addr: str

    def encode(self) -> bytes:
        data: bytes = msgpack.packb(
            [self.samples, self.model_version, self.ready, self.addr], use_bin_type=True
        )
        return data

    @classmethod
    def decode(cls, data: bytes) -> Progress:
        if len(data) > MAX_PROGRESS_BYTES:
            raise MalformedMessage(f"progress: {len(data)} bytes exceeds {MAX_PROGRESS_BYTES}")
        try:
            obj = msgpack.unpackb(data, raw=False, max_array_len=8, max_map_len=0, max_ext_len=0)
        except Exception as exc:
            raise MalformedMessage(f"progress: not valid msgpack: {exc}") from exc
        f = as_list(obj, "progress", 4)
        if len(f) != 4:
            raise MalformedMessage(f"progress: expected 4 fields, got {len(f)}")
        if not isinstance(f[2], bool):
            raise MalformedMessage("progress.ready: expected a boolean")
        return cls(
            as_int(f[0], "progress.samples", 0, MAX_SAMPLES),
            as_int(f[1], "progress.model_version", 0, MAX_ROUND),
            f[2],
            as_str(f[3], "progress.addr"),
        )
