"""The embedded chain persists to its data dir and reopens with its state intact."""

from __future__ import annotations

import os
from pathlib import Path

from eth_account import Account
from web3 import Web3

from shoal.ledger.backends import DEVCHAIN_DIR, embedded_web3
from shoal.ledger.chain import POLICY_ALLOWLIST, ChainLedger, deploy_contract
from shoal.ledger.devchain import SNAPSHOT_NAME, TXLOG_NAME, dev_private_keys

from .helpers import digest, ident


def test_reopen_replays_state_and_drops_a_torn_tail(tmp_path: Path) -> None:
    keys = dev_private_keys()
    run_id = os.urandom(32)
    w3, dev = embedded_web3(tmp_path)
    address = deploy_contract(w3, Account.from_key(keys[0]))
    owner = ChainLedger(w3, keys[0], address, run_id)
    owner.create_run(POLICY_ALLOWLIST)
    owner.allow(owner.account.address)
    p = ident(1).peer_id
    owner.register_peer(p)
    owner.anchor_round(0, digest(1), digest(2), [(p, 7)])
    nonce = w3.eth.get_transaction_count(owner.account.address)
    dev.close()
    # A crash mid-append leaves half a record behind.
    with open(tmp_path / DEVCHAIN_DIR / TXLOG_NAME, "ab") as f:
        f.write(b"\x00\x00\x01\x00garbage")

    w3b, dev2 = embedded_web3(tmp_path)
    again = ChainLedger(w3b, keys[0], address, run_id)
    assert again.anchor(0) == (digest(1), digest(2), p)
    assert again.credits(p) == 7 and again.is_admitted(p)
    assert w3b.eth.get_transaction_count(owner.account.address) == nonce
    again.anchor_round(1, digest(3), digest(4), [(p, 1)])
    assert [e.round for e in again.anchor_events()] == [0, 1]
    dev2.close()
    w3c, dev3 = embedded_web3(tmp_path)
    assert ChainLedger(w3c, keys[0], address, run_id).credits(p) == 8
    dev3.close()


def test_memory_only_chain_leaves_no_files(tmp_path: Path) -> None:
    w3, dev = embedded_web3(None)
    deploy_contract(w3, Account.from_key(dev_private_keys()[0]))
    assert dev.path is None and not any(tmp_path.iterdir())


def test_log_index_filters_like_a_node(tmp_path: Path) -> None:
    keys = dev_private_keys()
    w3, dev = embedded_web3(None)
    address = deploy_contract(w3, Account.from_key(keys[0]))
    lg = ChainLedger(w3, keys[0], address, os.urandom(32))
    lg.create_run(POLICY_ALLOWLIST)
    lg.allow(lg.account.address)
    p = ident(1).peer_id
    lg.register_peer(p)
    for r in range(3):
        lg.anchor_round(r, digest(r + 1), digest(9), [(p, 1)])
    topic = str(lg.contract.events.RoundAnchored().topic)
    everything = w3.eth.get_logs({"address": lg.address, "topics": [topic]})
    assert len(everything) == 3  # no block bounds: earliest..latest
    last = everything[-1]["blockNumber"]
    assert len(w3.eth.get_logs({"fromBlock": last, "toBlock": "latest", "topics": [topic]})) == 1
    run_topic = "0x" + lg.run_id.hex()
    assert len(w3.eth.get_logs({"topics": [topic, run_topic]})) == 3
    assert w3.eth.get_logs({"topics": [topic, "0x" + "00" * 32]}) == []
    assert w3.eth.get_logs({"address": Web3.to_checksum_address("0x" + "11" * 20)}) == []
    dev.close()


def _populate(tmp_path: Path, anchors: int) -> tuple[str, bytes, list[bytes]]:
    keys = dev_private_keys()
    w3, dev = embedded_web3(tmp_path)
    address = deploy_contract(w3, Account.from_key(keys[0]))
    run_id = os.urandom(32)
    lg = ChainLedger(w3, keys[0], address, run_id)
    lg.create_run(POLICY_ALLOWLIST)
    lg.allow(lg.account.address)
    lg.register_peer(ident(1).peer_id)
    for r in range(anchors):
        lg.anchor_round(r, digest(r + 1), digest(9), [(ident(1).peer_id, 1)])
    dev.close()  # clean close: writes the snapshot
    return address, run_id, keys


def test_snapshot_reopen_then_log_tail_replay(tmp_path: Path) -> None:
    address, run_id, keys = _populate(tmp_path, 3)
    snap = tmp_path / DEVCHAIN_DIR / SNAPSHOT_NAME
    assert snap.exists()
    w3, dev = embedded_web3(tmp_path)
    assert dev.loaded_snapshot
    lg = ChainLedger(w3, keys[0], address, run_id)
    assert [e.round for e in lg.anchor_events()] == [0, 1, 2]  # log index restored too
    lg.anchor_round(3, digest(4), digest(9), [(ident(1).peer_id, 1)])
    # A crash now: the log has one more tx than the snapshot (no clean close).
    os.close(dev._log_fd)  # type: ignore[arg-type]
    dev._log_fd = None
    w3b, dev2 = embedded_web3(tmp_path)
    assert dev2.loaded_snapshot and dev2.records == dev.records
    again = ChainLedger(w3b, keys[0], address, run_id)
    assert again.anchor(3) == (digest(4), digest(9), ident(1).peer_id)
    assert again.credits(ident(1).peer_id) == 4
    assert [e.round for e in again.anchor_events()] == [0, 1, 2, 3]
    dev2.close()


def test_snapshot_that_does_not_match_the_log_is_ignored(tmp_path: Path) -> None:
    address, run_id, keys = _populate(tmp_path, 2)
    log_path = tmp_path / DEVCHAIN_DIR / TXLOG_NAME
    snap = tmp_path / DEVCHAIN_DIR / SNAPSHOT_NAME
    good = snap.read_bytes()
    # A torn snapshot (crash while writing it outside the rename): unreadable, ignored.
    snap.write_bytes(good[: len(good) // 2])
    w3, dev = embedded_web3(tmp_path)
    assert not dev.loaded_snapshot
    lg = ChainLedger(w3, keys[0], address, run_id)
    assert lg.credits(ident(1).peer_id) == 2
    os.close(dev._log_fd)  # type: ignore[arg-type]
    dev._log_fd = None
    # A log changed under a valid snapshot: the snapshot no longer matches its bytes.
    snap.write_bytes(good)
    data = bytearray(log_path.read_bytes())
    log_path.write_bytes(bytes(data[: len(data) // 2]))  # history cut short
    _w3b, dev2 = embedded_web3(tmp_path)
    assert not dev2.loaded_snapshot
    os.close(dev2._log_fd)  # type: ignore[arg-type]
    dev2._log_fd = None


def test_readonly_open_changes_nothing(tmp_path: Path) -> None:
    _populate(tmp_path, 1)
    d = tmp_path / DEVCHAIN_DIR
    (d / SNAPSHOT_NAME).unlink()
    with open(d / TXLOG_NAME, "ab") as f:
        f.write(b"torn")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    _w3, dev = embedded_web3(tmp_path, readonly=True)
    dev.close()
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
