"""Ed25519 node keys, the PeerId derived from them, and sign/verify helpers.

A PeerId *is* the raw 32-byte Ed25519 public key, so anyone holding a PeerId can
check a signature without a lookup. Its printable form is lowercase base32 with a
``sh1`` prefix so that a mistyped id fails loudly instead of parsing as garbage.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

PEER_ID_BYTES = 32
SIGNATURE_BYTES = 64
_PREFIX = "sh1"
_KEY_FILE_MODE = 0o600


class KeyFileError(Exception):
    """The key file is unsafe (readable by others) or unreadable."""


@dataclass(frozen=True, slots=True, order=True)
class PeerId:
    raw: bytes
    _dht_key: int = field(default=0, compare=False, repr=False)
    _hash: int = field(default=0, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != PEER_ID_BYTES:
            raise ValueError(f"a PeerId is {PEER_ID_BYTES} raw bytes")
        # Kademlia needs ids spread uniformly; hashing the key gives that even for
        # keys an attacker chose, and caching it keeps XOR-distance cheap.
        object.__setattr__(
            self, "_dht_key", int.from_bytes(hashlib.sha256(self.raw).digest(), "big")
        )
        # Peer ids key every table in the cores; hashing them is the simulator's hottest path.
        object.__setattr__(self, "_hash", hash(self.raw))

    def __hash__(self) -> int:
        return self._hash

    @property
    def dht_key(self) -> int:
        """256-bit position of this peer in the DHT key space."""
        return self._dht_key

    def __str__(self) -> str:
        return _PREFIX + base64.b32encode(self.raw).decode().rstrip("=").lower()

    def __repr__(self) -> str:
        return f"PeerId({str(self)[:14]}…)"

    def short(self) -> str:
        return str(self)[:12]

    @classmethod
    def parse(cls, text: str) -> PeerId:
        if not text.startswith(_PREFIX):
            raise ValueError(f"peer id must start with {_PREFIX!r}: {text!r}")
        body = text[len(_PREFIX) :].upper()
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except ValueError as exc:
            raise ValueError(f"peer id is not valid base32: {text!r}") from exc
        if len(raw) != PEER_ID_BYTES:
            raise ValueError(f"peer id decodes to {len(raw)} bytes, want {PEER_ID_BYTES}")
        return cls(raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        return verify(self, signature, data)


def verify(peer_id: PeerId, signature: bytes, data: bytes) -> bool:
    """True only if ``signature`` is ``peer_id``'s Ed25519 signature over ``data``."""
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(peer_id.raw).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


class Identity:
    """A node's private key. Never serialised anywhere but its own key file."""

    __slots__ = ("_key", "peer_id")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.peer_id = PeerId(raw)

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Deterministic identity (the simulator derives keys from its seeded RNG)."""
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def private_bytes(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """Load the key at ``path``, creating it (mode 0600) on first start.

        A key that group or others can read is refused: it may already be leaked,
        and silently fixing the mode would hide that from the operator.
        """
        path = Path(path)
        if path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise KeyFileError(
                    f"key file {path} has mode {mode:04o}; it must not be readable by group "
                    f"or others. Run: chmod 600 {path}"
                )
            seed = path.read_bytes()
            if len(seed) != 32:
                raise KeyFileError(f"key file {path} holds {len(seed)} bytes, want 32")
            return cls.from_seed(seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        identity = cls.generate()
        # O_EXCL: two nodes started on one data dir must not overwrite each other's key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _KEY_FILE_MODE)
        try:
            os.write(fd, identity.private_bytes())
            os.fsync(fd)
        finally:
            os.close(fd)
        return identity
