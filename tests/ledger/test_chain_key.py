"""The chain signing key comes from a 0600 file or $SHOAL_CHAIN_KEY, never silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.ledger.backends import CHAIN_KEY_ENV, ChainKeyError, load_chain_key, write_chain_key
from shoal.ledger.devchain import dev_private_keys


def test_key_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = dev_private_keys()[3]
    path = tmp_path / "chain.key"
    write_chain_key(path, key)
    assert path.stat().st_mode & 0o777 == 0o600
    from_file = load_chain_key(path)
    assert bytes(from_file.key) == key
    monkeypatch.setenv(CHAIN_KEY_ENV, "0x" + key.hex())
    assert load_chain_key().address == from_file.address


def test_bad_keys_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CHAIN_KEY_ENV, raising=False)
    with pytest.raises(ChainKeyError, match="no chain key"):
        load_chain_key()
    path = tmp_path / "chain.key"
    write_chain_key(path, dev_private_keys()[0])
    path.chmod(0o644)
    with pytest.raises(ChainKeyError, match="readable by others"):
        load_chain_key(path)
    path.chmod(0o600)
    path.write_text("not a key")
    with pytest.raises(ChainKeyError, match="not a 32-byte hex private key"):
        load_chain_key(path)
