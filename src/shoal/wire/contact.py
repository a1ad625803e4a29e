"""A Contact is how to reach a peer: its PeerId plus a ``host:port`` address.

The address is a hint, not an identity: the transport checks, on every dial, that
the key at that address matches the PeerId.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shoal.identity.keys import PeerId
from shoal.wire.codec import MalformedMessage
from shoal.wire.fields import as_list, as_peer_id, as_str


@dataclass(frozen=True, slots=True)
class Contact:
    peer_id: PeerId
    addr: str

    def to_fields(self) -> list[Any]:
        return [self.peer_id.raw, self.addr]

    @classmethod
    def from_fields(cls, x: Any, name: str = "contact") -> Contact:
        f = as_list(x, name, 2)
        if len(f) != 2:
            raise MalformedMessage(f"{name}: expected [peer_id, addr]")
        return cls(as_peer_id(f[0], f"{name}.peer_id"), as_str(f[1], f"{name}.addr"))

    def host_port(self) -> tuple[str, int]:
        return split_addr(self.addr)

    def __str__(self) -> str:
        return f"{self.peer_id}@{self.addr}"

    @classmethod
    def parse(cls, text: str) -> Contact:
        """Parse ``PEERID@HOST:PORT`` (the CLI's --bootstrap form)."""
        pid, sep, addr = text.partition("@")
        if not sep:
            raise ValueError(f"expected PEERID@HOST:PORT, got {text!r}")
        split_addr(addr)
        return cls(PeerId.parse(pid), addr)


def split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {addr!r}")
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"port must be a number in {addr!r}") from None
    if not 0 <= p <= 65535:
        raise ValueError(f"port out of range in {addr!r}")
    return host.strip("[]"), p
