"""Length-prefixed frames, sans-IO.

A frame is a 4-byte big-endian length followed by that many bytes. The decoder is fed
whatever bytes the socket produced and returns the complete frames; it never holds
more than one partial frame, and rejects a length above MAX_FRAME_BYTES *before*
buffering the body, so an attacker cannot make us allocate by announcing a big frame.
"""

from __future__ import annotations

import struct

from shoal.wire.limits import MAX_FRAME_BYTES

HEADER = struct.Struct(">I")
HEADER_BYTES = HEADER.size


class FrameError(Exception):
    """The peer sent a stream that cannot be framed. The connection must close."""


class FrameTooLarge(FrameError):
    pass


class TruncatedStream(FrameError):
    pass


def encode_frame(
    payload: bytes | bytearray | memoryview, max_frame: int = MAX_FRAME_BYTES
) -> bytes:
    n = len(payload)
    if n > max_frame:
        raise FrameTooLarge(f"frame of {n} bytes exceeds the limit of {max_frame}")
    return HEADER.pack(n) + bytes(payload)


class FrameDecoder:
    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._max = max_frame
        self._buf = bytearray()
        self._need: int | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        self._buf += data
        frames: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buf) < HEADER_BYTES:
                    break
                (n,) = HEADER.unpack_from(self._buf, 0)
                if n > self._max:
                    self._buf.clear()  # the stream is dead; hold nothing for it
                    raise FrameTooLarge(
                        f"peer announced a frame of {n} bytes; the limit is {self._max}"
                    )
                del self._buf[:HEADER_BYTES]
                self._need = n
            if len(self._buf) < self._need:
                break
            frames.append(bytes(self._buf[: self._need]))
            del self._buf[: self._need]
            self._need = None
        return frames

    def eof(self) -> None:
        """Call at end of stream: leftover bytes mean the peer died mid-frame."""
        if self._buf or self._need is not None:
            raise TruncatedStream(
                f"stream ended inside a frame ({len(self._buf)} bytes of "
                f"{self._need if self._need is not None else 'a header'})"
            )
