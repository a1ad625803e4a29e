import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.identity import Identity, KeyFileError, PeerId, verify


def test_key_file_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "d" / "node.key"
    a = Identity.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    b = Identity.load_or_create(path)
    assert a.peer_id == b.peer_id


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    Identity.load_or_create(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        Identity.load_or_create(path)


def test_truncated_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"short")
    os.close(fd)
    with pytest.raises(KeyFileError, match="5 bytes"):
        Identity.load_or_create(path)


def test_peer_id_text_round_trip_and_rejects_garbage() -> None:
    pid = Identity.generate().peer_id
    assert PeerId.parse(str(pid)) == pid
    with pytest.raises(ValueError):
        PeerId.parse("xx" + str(pid)[2:])
    with pytest.raises(ValueError):
        PeerId.parse(str(pid)[:-4])
    with pytest.raises(ValueError):
        PeerId(b"\x00" * 31)


def test_sign_verify_and_forgeries() -> None:
    a, b = Identity.generate(), Identity.generate()
    sig = a.sign(b"update")
    assert verify(a.peer_id, sig, b"update")
    assert not verify(a.peer_id, sig, b"updatf")
    assert not verify(b.peer_id, sig, b"update")
    assert not verify(a.peer_id, sig[:-1], b"update")
    assert not verify(a.peer_id, bytes(64), b"update")


@given(st.binary(min_size=0, max_size=80), st.binary(max_size=64))
def test_random_signatures_never_verify(sig: bytes, data: bytes) -> None:
    pid = Identity.from_seed(b"\x01" * 32).peer_id
    assert not verify(pid, sig, data)


def test_dht_key_is_stable_and_spread() -> None:
    ids = [Identity.from_seed(bytes([i]) * 32).peer_id for i in range(64)]
    keys = [p.dht_key for p in ids]
    assert len(set(keys)) == 64
    # top bit should be set for roughly half of them if keys are spread
    assert 16 < sum(k >> 255 for k in keys) < 48
