"""The shoal handshake, sans-IO: SIGMA-I style signed ephemeral X25519.

Initiator and Responder are state machines fed the bytes their socket produced;
they return the bytes to send and, when done, a HandshakeResult with the peer's
verified PeerId, its advertised listen address, and one AES-256-GCM key per
direction. They hold no sockets or clocks: the runtime enforces HANDSHAKE_TIMEOUT_S.

Wire format (version 1). Every handshake message is one frame (4-byte big-endian
length, at most MAX_HANDSHAKE_FRAME bytes) whose body starts with the 7-byte header
``"SHOAL" | version u8 | type u8``::

    HELLO    (1, I->R)  header | e_i (32, X25519 public)
    RESPONSE (2, R->I)  header | e_r (32) | AEAD(k_r, s_r | u16 len | addr_r | sig_r)
    FINISH   (3, I->R)  header | AEAD(k_i, s_i | purpose u8 | u16 len | addr_i | sig_i)
    REJECT (127, R->I)  header | utf-8 reason   (only for an unsupported version)

``s_*`` is the raw 32-byte Ed25519 key (= PeerId.raw), ``addr_*`` the UTF-8
``host:port`` the sender listens on ("" if it does not listen; a host of 0.0.0.0 or
:: means "use the address you see me at"). ``purpose`` is 0 for a message
connection and 1 for a bulk stream. Let H = SHA-256, ``dh`` = X25519(e_i, e_r),
``m1``, ``m2``, ``m3`` the frame bodies, and ``m2_clear`` = header | e_r::

    k_r | k_i   = HKDF-SHA256(dh, salt=H(m1 | m2_clear), info="shoal handshake v1 keys")
    sig_r       = Ed25519(s_r, "shoal handshake v1 responder\\0"
                          | H(m1 | m2_clear | s_r | u16 len | addr_r))
    sig_i       = Ed25519(s_i, "shoal handshake v1 initiator\\0"
                          | H(m1 | m2 | header3 | s_i | purpose | u16 len | addr_i))
    k_i2r|k_r2i = HKDF-SHA256(dh, salt=H(m1 | m2 | m3), info="shoal traffic v1 keys")

The handshake AEADs use AES-256-GCM with a zero nonce (each k_r / k_i seals exactly
one message) and the clear header (plus e_r) as associated data. Encrypting the
identity part hides identities from passive observers, and because FINISH is sealed
under a key only the holder of e_i can derive, an attacker cannot splice its own
identity onto someone else's session (the identity-misbinding attack on plain
signed DH). The initiator checks that s_r is the PeerId it dialled (PeerIdMismatch)
after verifying sig_r, so a PeerIdMismatch means a genuine, different peer answered.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shoal.identity.keys import PEER_ID_BYTES, SIGNATURE_BYTES, PeerId
from shoal.transport.errors import HandshakeError, PeerIdMismatch, UnsupportedVersion
from shoal.wire.contact import split_addr
from shoal.wire.frames import HEADER as FRAME_HEADER
from shoal.wire.frames import HEADER_BYTES as FRAME_HEADER_BYTES
from shoal.wire.limits import MAX_STRING_BYTES

MAGIC = b"SHOAL"
VERSION = 1
SUPPORTED_VERSIONS = frozenset({VERSION})

MSG_HELLO = 1
MSG_RESPONSE = 2
MSG_FINISH = 3
MSG_REJECT = 127

PURPOSE_MESSAGES = 0
PURPOSE_BULK = 1
PURPOSES = frozenset({PURPOSE_MESSAGES, PURPOSE_BULK})

HS_HEADER = struct.Struct(">5sBB")
_U16 = struct.Struct(">H")
X25519_BYTES = 32
AEAD_TAG_BYTES = 16
# The largest legal message is FINISH: header + s_i + purpose + len + addr + sig + tag.
MAX_HANDSHAKE_FRAME = 1024

_NONCE0 = bytes(12)
_CTX_RESPONDER = b"shoal handshake v1 responder\x00"
_CTX_INITIATOR = b"shoal handshake v1 initiator\x00"
_INFO_HANDSHAKE = b"shoal handshake v1 keys"
_INFO_TRAFFIC = b"shoal traffic v1 keys"


class Signer(Protocol):
    """What the handshake needs from an Identity (kept minimal so tests can forge)."""

    @property
    def peer_id(self) -> PeerId: ...

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    peer_id: PeerId
    peer_addr: str
    purpose: int
    send_key: bytes
    recv_key: bytes
    session_id: bytes
    """H(m1 | m2 | m3): unique per session, the same on both ends."""
    leftover: bytes
    """Bytes that arrived after the last handshake frame (the first records)."""


def encode_reject(reason: str) -> bytes:
    """A framed REJECT carrying our version, sent before closing on a version mismatch."""
    body = HS_HEADER.pack(MAGIC, VERSION, MSG_REJECT) + reason.encode()[:200]
    return FRAME_HEADER.pack(len(body)) + body


def validate_listen_addr(addr: str) -> None:
    """Raise ValueError unless ``addr`` is "" or a parseable, short ``host:port``."""
    if len(addr.encode()) > MAX_STRING_BYTES:
        raise ValueError(f"listen address longer than {MAX_STRING_BYTES} bytes")
    if addr:
        split_addr(addr)


def _frame(body: bytes) -> bytes:
    return FRAME_HEADER.pack(len(body)) + body


def _hash(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


def _hkdf(dh: bytes, salt: bytes, info: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=salt, info=info).derive(dh)
    return okm[:32], okm[32:]


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _exchange(key: X25519PrivateKey, peer_public: bytes) -> bytes:
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # low-order point: the shared secret would be all zero
        raise HandshakeError(f"peer sent an invalid X25519 key: {exc}") from exc


def _encode_addr(addr: str) -> bytes:
    raw = addr.encode()
    return _U16.pack(len(raw)) + raw


def _decode_addr(data: bytes, offset: int) -> tuple[str, int]:
    if offset + _U16.size > len(data):
        raise HandshakeError("handshake message truncated before the address")
    (n,) = _U16.unpack_from(data, offset)
    offset += _U16.size
    if n > MAX_STRING_BYTES or offset + n > len(data):
        raise HandshakeError(f"handshake address length {n} is invalid")
    try:
        addr = data[offset : offset + n].decode()
        validate_listen_addr(addr)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise HandshakeError(f"peer advertised an invalid address: {exc}") from exc
    return addr, offset + n


def _open(key: bytes, sealed: bytes, aad: bytes, what: str) -> bytes:
    if len(sealed) < AEAD_TAG_BYTES:
        raise HandshakeError(f"{what} is too short")
    try:
        return AESGCM(key).decrypt(_NONCE0, sealed, aad)
    except InvalidTag as exc:
        raise HandshakeError(f"{what} failed authentication (tampered or wrong key)") from exc


def _check_header(body: bytes, expect: int) -> None:
    if len(body) < HS_HEADER.size:
        raise HandshakeError(f"handshake message of {len(body)} bytes is too short")
    magic, version, mtype = HS_HEADER.unpack_from(body)
    if magic != MAGIC:
        raise HandshakeError("not a shoal handshake (bad magic)")
    if mtype == MSG_REJECT:
        reason = body[HS_HEADER.size :].decode("utf-8", "replace")
        if version not in SUPPORTED_VERSIONS:
            raise UnsupportedVersion(
                f"peer speaks shoal handshake version {version}; this node speaks "
                f"{VERSION} (peer said: {reason})"
            )
        raise HandshakeError(f"peer rejected the handshake: {reason}")
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(
            f"peer speaks shoal handshake version {version}; this node speaks {VERSION}"
        )
    if mtype != expect:
        raise HandshakeError(f"expected handshake message type {expect}, got {mtype}")


class _FrameBuffer:
    """Collects handshake frames one at a time; bytes past them are leftover."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def next_frame(self) -> bytes | None:
        if len(self._buf) < FRAME_HEADER_BYTES:
            return None
        (n,) = FRAME_HEADER.unpack_from(self._buf)
        if n > MAX_HANDSHAKE_FRAME:
            raise HandshakeError(
                f"handshake frame of {n} bytes exceeds the limit of {MAX_HANDSHAKE_FRAME}"
            )
        if len(self._buf) < FRAME_HEADER_BYTES + n:
            return None
        body = bytes(self._buf[FRAME_HEADER_BYTES : FRAME_HEADER_BYTES + n])
        del self._buf[: FRAME_HEADER_BYTES + n]
        return body

    @property
    def empty(self) -> bool:
        """No partial frame is buffered (we are between messages)."""
        return not self._buf

    def rest(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


class _Machine:
    """Shared plumbing: failure latch, frame buffer, result."""

    def __init__(self, signer: Signer, listen_addr: str, ephemeral: X25519PrivateKey | None):
        validate_listen_addr(listen_addr)
        self._signer = signer
        self._addr = listen_addr
        self._eph = ephemeral if ephemeral is not None else X25519PrivateKey.generate()
        self._eph_pub = _public_bytes(self._eph)
        self._frames = _FrameBuffer()
        self._failed = False
        self._result: HandshakeResult | None = None

    @property
    def result(self) -> HandshakeResult | None:
        """Set once the handshake has succeeded."""
        return self._result

    @property
    def between_messages(self) -> bool:
        """No partial frame is buffered: a close now cuts no message in half."""
        return self._frames.empty

    def _guard(self) -> None:
        if self._failed:
            raise HandshakeError("handshake already failed")
        if self._result is not None:
            raise RuntimeError("handshake is complete; use result.leftover")


class Initiator(_Machine):
    """The dialling side. Call start(), send its bytes, then feed receive_data()."""

    def __init__(
        self,
        signer: Signer,
        *,
        listen_addr: str,
        expected_peer: PeerId | None,
        purpose: int = PURPOSE_MESSAGES,
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        super().__init__(signer, listen_addr, ephemeral)
        if purpose not in PURPOSES:
            raise ValueError(f"unknown connection purpose {purpose}")
        self._expected = expected_peer
        self._purpose = purpose
        self._m1: bytes | None = None

    def start(self) -> bytes:
        """The framed HELLO to send first."""
        if self._m1 is not None:
            raise RuntimeError("start() called twice")
        self._m1 = HS_HEADER.pack(MAGIC, VERSION, MSG_HELLO) + self._eph_pub
        return _frame(self._m1)

    def receive_data(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed received bytes; returns bytes to send (FINISH once RESPONSE is in)."""
        if self._m1 is None:
            raise RuntimeError("call start() first")
        self._guard()
        try:
            self._frames.feed(data)
            m2 = self._frames.next_frame()
            if m2 is None:
                return b""
            return _frame(self._on_response(self._m1, m2))
        except HandshakeError:
            self._failed = True
            raise

    def _on_response(self, m1: bytes, m2: bytes) -> bytes:
        _check_header(m2, MSG_RESPONSE)
        clear_len = HS_HEADER.size + X25519_BYTES
        if len(m2) < clear_len:
            raise HandshakeError("RESPONSE is too short")
        m2_clear = m2[:clear_len]
        e_r = m2[HS_HEADER.size : clear_len]
        dh = _exchange(self._eph, e_r)
        k_r, k_i = _hkdf(dh, _hash(m1, m2_clear), _INFO_HANDSHAKE)
        plain = _open(k_r, m2[clear_len:], m2_clear, "RESPONSE")
        if len(plain) < PEER_ID_BYTES:
            raise HandshakeError("RESPONSE payload is too short")
        peer = PeerId(plain[:PEER_ID_BYTES])
        addr, off = _decode_addr(plain, PEER_ID_BYTES)
        if len(plain) != off + SIGNATURE_BYTES:
            raise HandshakeError("RESPONSE payload has the wrong length")
        signed = _CTX_RESPONDER + _hash(m1, m2_clear, plain[:off])
        if not peer.verify(plain[off:], signed):
            raise HandshakeError(f"responder {peer.short()} sent a bad signature")
        if self._expected is not None and peer != self._expected:
            raise PeerIdMismatch(f"dialled {self._expected} but the peer at this address is {peer}")

        header3 = HS_HEADER.pack(MAGIC, VERSION, MSG_FINISH)
        mine = self._signer.peer_id.raw + bytes([self._purpose]) + _encode_addr(self._addr)
        sig = self._signer.sign(_CTX_INITIATOR + _hash(m1, m2, header3, mine))
        m3 = header3 + AESGCM(k_i).encrypt(_NONCE0, mine + sig, header3)
        session = _hash(m1, m2, m3)
        k_i2r, k_r2i = _hkdf(dh, session, _INFO_TRAFFIC)
        self._result = HandshakeResult(
            peer_id=peer,
            peer_addr=addr,
            purpose=self._purpose,
            send_key=k_i2r,
            recv_key=k_r2i,
            session_id=session,
            leftover=self._frames.rest(),
        )
        return m3


class Responder(_Machine):
    """The accepting side. Feed receive_data() from the first byte on."""

    def __init__(
        self,
        signer: Signer,
        *,
        listen_addr: str,
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        super().__init__(signer, listen_addr, ephemeral)
        self._m1: bytes | None = None
        self._m2: bytes | None = None
        self._dh = b""
        self._k_i = b""

    def receive_data(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed received bytes; returns bytes to send (RESPONSE once HELLO is in)."""
        self._guard()
        try:
            self._frames.feed(data)
            out = b""
            while self._result is None:
                body = self._frames.next_frame()
                if body is None:
                    break
                if self._m1 is None:
                    out += _frame(self._on_hello(body))
                else:
                    self._on_finish(body)
            return out
        except HandshakeError:
            self._failed = True
            raise

    def _on_hello(self, m1: bytes) -> bytes:
        _check_header(m1, MSG_HELLO)
        if len(m1) != HS_HEADER.size + X25519_BYTES:
            raise HandshakeError(f"HELLO must be {HS_HEADER.size + X25519_BYTES} bytes")
        self._dh = _exchange(self._eph, m1[HS_HEADER.size :])
        m2_clear = HS_HEADER.pack(MAGIC, VERSION, MSG_RESPONSE) + self._eph_pub
        k_r, self._k_i = _hkdf(self._dh, _hash(m1, m2_clear), _INFO_HANDSHAKE)
        mine = self._signer.peer_id.raw + _encode_addr(self._addr)
        sig = self._signer.sign(_CTX_RESPONDER + _hash(m1, m2_clear, mine))
        m2 = m2_clear + AESGCM(k_r).encrypt(_NONCE0, mine + sig, m2_clear)
        self._m1, self._m2 = m1, m2
        return m2

    def _on_finish(self, m3: bytes) -> None:
        assert self._m1 is not None and self._m2 is not None
        _check_header(m3, MSG_FINISH)
        header3 = m3[: HS_HEADER.size]
        plain = _open(self._k_i, m3[HS_HEADER.size :], header3, "FINISH")
        if len(plain) < PEER_ID_BYTES + 1:
            raise HandshakeError("FINISH payload is too short")
        peer = PeerId(plain[:PEER_ID_BYTES])
        purpose = plain[PEER_ID_BYTES]
        if purpose not in PURPOSES:
            raise HandshakeError(f"unknown connection purpose {purpose}")
        addr, off = _decode_addr(plain, PEER_ID_BYTES + 1)
        if len(plain) != off + SIGNATURE_BYTES:
            raise HandshakeError("FINISH payload has the wrong length")
        signed = _CTX_INITIATOR + _hash(self._m1, self._m2, header3, plain[:off])
        if not peer.verify(plain[off:], signed):
            raise HandshakeError(f"initiator {peer.short()} sent a bad signature")
        session = _hash(self._m1, self._m2, m3)
        k_i2r, k_r2i = _hkdf(self._dh, session, _INFO_TRAFFIC)
        self._result = HandshakeResult(
            peer_id=peer,
            peer_addr=addr,
            purpose=purpose,
            send_key=k_r2i,
            recv_key=k_i2r,
            session_id=session,
            leftover=self._frames.rest(),
        )
