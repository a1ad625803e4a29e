"""The sans-IO handshake: agreement, identity binding, and rejection of bad input."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.identity.keys import Identity, PeerId
from shoal.transport.errors import HandshakeError, PeerIdMismatch, UnsupportedVersion
from shoal.transport.handshake import (
    HS_HEADER,
    MAGIC,
    MSG_HELLO,
    PURPOSE_BULK,
    PURPOSE_MESSAGES,
    Initiator,
    Responder,
    encode_reject,
)
from shoal.wire.frames import HEADER

ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(range(1, 33)))
MALLORY = Identity.from_seed(bytes(range(2, 34)))


class Forger:
    """Claims ``victim``'s PeerId but can only sign with its own key."""

    def __init__(self, victim: Identity, key: Identity) -> None:
        self.peer_id: PeerId = victim.peer_id
        self._key = key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def pair(
    initiator_signer: object = ALICE,
    responder_signer: object = BOB,
    expected: PeerId | None = BOB.peer_id,
    purpose: int = PURPOSE_MESSAGES,
) -> tuple[Initiator, Responder]:
    i = Initiator(
        initiator_signer,  # type: ignore[arg-type]
        listen_addr="10.0.0.1:4000",
        expected_peer=expected,
        purpose=purpose,
    )
    r = Responder(responder_signer, listen_addr="10.0.0.2:5000")  # type: ignore[arg-type]
    return i, r


def test_handshake_agrees_on_keys_identities_and_addresses() -> None:
    i, r = pair(purpose=PURPOSE_BULK)
    m2 = r.receive_data(i.start())
    m3 = i.receive_data(m2)
    assert i.result is not None and r.receive_data(m3 + b"first record") == b""
    assert r.result is not None
    assert i.result.peer_id == BOB.peer_id and r.result.peer_id == ALICE.peer_id
    assert i.result.peer_addr == "10.0.0.2:5000" and r.result.peer_addr == "10.0.0.1:4000"
    assert r.result.purpose == PURPOSE_BULK
    assert i.result.send_key == r.result.recv_key and i.result.recv_key == r.result.send_key
    assert i.result.send_key != i.result.recv_key
    assert i.result.session_id == r.result.session_id
    assert r.result.leftover == b"first record"


@given(st.data())
def test_handshake_survives_any_byte_split(data: st.DataObject) -> None:
    i, r = pair()
    stream = i.start()
    out = b""
    for b in _split(stream, data):
        out += r.receive_data(b)
    back = b""
    for b in _split(out, data):
        back += i.receive_data(b)
    for b in _split(back, data):
        r.receive_data(b)
    assert i.result is not None and r.result is not None
    assert i.result.send_key == r.result.recv_key


def _split(blob: bytes, data: st.DataObject) -> list[bytes]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=5)))
    edges = [0, *cuts, len(blob)]
    return [blob[a:b] for a, b in itertools.pairwise(edges) if b > a]


def test_sessions_get_fresh_keys() -> None:
    keys = set()
    for _ in range(2):
        i, r = pair()
        i.receive_data(r.receive_data(i.start()))
        assert i.result is not None
        keys.add(i.result.send_key)
    assert len(keys) == 2


def test_initiator_rejects_unexpected_responder() -> None:
    i, r = pair(expected=MALLORY.peer_id)
    with pytest.raises(PeerIdMismatch, match="dialled"):
        i.receive_data(r.receive_data(i.start()))
    assert i.result is None


def test_initiator_rejects_forged_responder_signature() -> None:
    i, r = pair(responder_signer=Forger(BOB, MALLORY))
    with pytest.raises(HandshakeError, match="bad signature") as err:
        i.receive_data(r.receive_data(i.start()))
    assert not isinstance(err.value, PeerIdMismatch)


def test_responder_rejects_forged_initiator_signature() -> None:
    i, r = pair(initiator_signer=Forger(ALICE, MALLORY))
    m3 = i.receive_data(r.receive_data(i.start()))
    with pytest.raises(HandshakeError, match="bad signature"):
        r.receive_data(m3)
    assert r.result is None


def test_responder_rejects_unknown_version_clearly() -> None:
    i, r = pair()
    m1 = bytearray(i.start())
    m1[HEADER.size + len(MAGIC)] = 99  # version byte
    with pytest.raises(UnsupportedVersion, match="version 99"):
        r.receive_data(bytes(m1))


def test_initiator_reports_peers_reject_of_its_version() -> None:
    i, _ = pair()
    i.start()
    reject = bytearray(encode_reject("we only speak 7"))
    reject[HEADER.size + len(MAGIC)] = 7
    with pytest.raises(UnsupportedVersion, match="version 7"):
        i.receive_data(bytes(reject))


def test_bad_magic_and_oversized_frame_rejected() -> None:
    _, r = pair()
    with pytest.raises(HandshakeError, match="magic"):
        r.receive_data(frame(HS_HEADER.pack(b"HTTP/", 1, MSG_HELLO) + bytes(32)))
    _, r = pair()
    with pytest.raises(HandshakeError, match="exceeds"):
        r.receive_data(b"\xff\xff\xff\xff")


def test_low_order_ephemeral_key_rejected() -> None:
    _, r = pair()
    with pytest.raises(HandshakeError, match="X25519"):
        r.receive_data(frame(HS_HEADER.pack(MAGIC, 1, MSG_HELLO) + bytes(32)))


def test_failed_machine_stays_failed() -> None:
    _, r = pair()
    with pytest.raises(HandshakeError):
        r.receive_data(b"\xff\xff\xff\xff")
    with pytest.raises(HandshakeError, match="already failed"):
        r.receive_data(b"")


@given(st.integers(min_value=0), st.integers(0, 255))
@settings(max_examples=60)
def test_any_tampered_handshake_byte_fails(pos: int, flip: int) -> None:
    i, r = pair()
    m1 = i.start()
    m2 = bytearray(r.receive_data(m1))
    if flip == 0:
        flip = 1
    k = HEADER.size + pos % (len(m2) - HEADER.size)  # tamper the body, not the length
    m2[k] ^= flip
    with pytest.raises(HandshakeError):
        i.receive_data(bytes(m2))


@given(st.lists(st.binary(max_size=1100), max_size=4), st.booleans())
@settings(max_examples=300)
def test_responder_raises_only_handshake_errors(chunks: list[bytes], valid_hello: bool) -> None:
    i, r = pair()
    if valid_hello:
        r.receive_data(i.start())
    try:
        for c in chunks:
            r.receive_data(c)
    except HandshakeError:
        pass


@given(st.lists(st.binary(max_size=1100), max_size=4), st.booleans())
@settings(max_examples=300)
def test_initiator_raises_only_handshake_errors(chunks: list[bytes], plausible: bool) -> None:
    i, _ = pair()
    i.start()
    try:
        if plausible:  # a well-formed header so the fuzz reaches the crypto
            i.receive_data(frame(HS_HEADER.pack(MAGIC, 1, 2) + b"".join(chunks)[:900]))
        for c in chunks:
            i.receive_data(c)
    except HandshakeError:
        pass
