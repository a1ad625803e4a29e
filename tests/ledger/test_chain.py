"""The contract through the Ledger interface; every test runs on both backends."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from eth_typing import HexStr

from shoal.identity.keys import PeerId
from shoal.ledger.chain import (
    GAS_ANCHOR_BASE,
    GAS_ANCHOR_PER_PEER,
    POLICY_ALLOWLIST,
    POLICY_STAKE,
    ChainLedger,
    LedgerRevert,
    deploy_contract,
)
from shoal.ledger.entry import GENESIS_PREV, Kind, sign_entry
from shoal.ledger.equivocation import EquivocationProof
from shoal.ledger.feed import FeedStore
from shoal.ledger.payloads import JoinedRun, encode_payload

from .conftest import ChainUnderTest
from .helpers import digest, ident

ETH = 10**18


def ledgers(chain: ChainUnderTest, n: int) -> list[ChainLedger]:
    """A fresh contract and run; ledger i signs with funded account i (0 = owner)."""
    owner = Account.from_key(chain.keys[0])
    address = deploy_contract(chain.w3, owner)
    run_id = os.urandom(32)
    return [ChainLedger(chain.w3, chain.keys[i], address, run_id) for i in range(n)]


def revert_reason(fn: object, *args: object, **kw: object) -> str:
    with pytest.raises(LedgerRevert) as info:
        fn(*args, **kw)  # type: ignore[operator]
    return info.value.reason


def test_allowlist_admission(chain: ChainUnderTest) -> None:
    owner, peer = ledgers(chain, 2)
    owner.create_run(POLICY_ALLOWLIST)
    assert revert_reason(owner.create_run, POLICY_ALLOWLIST) == "run-exists"
    p = ident(1).peer_id
    assert revert_reason(peer.register_peer, p) == "not-allowed"
    assert not peer.is_admitted(p)
    assert revert_reason(peer.allow, peer.account.address) == "not-owner"
    owner.allow(peer.account.address)
    peer.register_peer(p)
    assert peer.is_admitted(p)
    assert revert_reason(peer.register_peer, ident(2).peer_id) == "account-taken"
    assert revert_reason(owner.register_peer, p) == "peer-taken"
    assert revert_reason(owner.register_peer, ident(3).peer_id) == "not-allowed"


def test_min_stake_admission(chain: ChainUnderTest) -> None:
    owner, peer = ledgers(chain, 2)
    owner.create_run(POLICY_STAKE, min_stake=ETH)
    p = ident(1).peer_id
    assert revert_reason(peer.register_peer, p, stake=ETH - 1) == "stake-too-low"
    peer.register_peer(p, stake=ETH)
    assert peer.is_admitted(p) and peer.stake(p) == ETH
    assert revert_reason(owner.create_run, 7) == "run-exists"


def _admit(ls: list[ChainLedger], stake: int = 0) -> list[PeerId]:
    owner = ls[0]
    owner.create_run(POLICY_STAKE if stake else POLICY_ALLOWLIST, min_stake=stake)
    peers = []
    for i, lg in enumerate(ls):
        if not stake:
            owner.allow(lg.account.address)
        p = ident(i + 1).peer_id
        lg.register_peer(p, stake=stake)
        peers.append(p)
    return peers


def test_anchor_is_one_transaction_with_credits(chain: ChainUnderTest) -> None:
    ls = ledgers(chain, 4)
    peers = _admit(ls)
    w3 = chain.w3
    before = w3.eth.get_transaction_count(ls[1].account.address)
    block_before = w3.eth.block_number
    tx = ls[1].anchor_round(0, digest(1), digest(2), [(p, 10 + i) for i, p in enumerate(peers)])
    assert w3.eth.get_transaction_count(ls[1].account.address) == before + 1
    receipt = w3.eth.get_transaction_receipt(HexStr(tx))
    assert receipt["gasUsed"] < GAS_ANCHOR_BASE + GAS_ANCHOR_PER_PEER * len(peers)
    assert w3.eth.block_number == block_before + 1
    assert ls[2].anchor(0) == (digest(1), digest(2), peers[1])
    assert ls[2].anchor(1) is None
    assert [ls[0].round_credit(0, p) for p in peers] == [10, 11, 12, 13]
    ls[3].anchor_round(2, digest(3), digest(4), [(peers[0], 5)])
    assert ls[0].credits(peers[0]) == 15
    # Old rounds cannot be replayed or overwritten, by anyone.
    assert revert_reason(ls[1].anchor_round, 0, digest(9), digest(9), [(peers[0], 1)]) == (
        "stale-round"
    )
    assert revert_reason(ls[1].anchor_round, 2, digest(9), digest(9), [(peers[0], 1)]) == (
        "stale-round"
    )
    stranger = ident(99).peer_id
    assert revert_reason(ls[1].anchor_round, 3, digest(1), digest(1), [(stranger, 1)]) == (
        "peer-not-admitted"
    )
    dup = [(peers[0], 1), (peers[0], 1)]
    assert revert_reason(ls[1].anchor_round, 3, digest(1), digest(1), dup) == "duplicate-peer"
    events = ls[0].anchor_events()
    assert [(e.round, e.feeds_root, e.credits) for e in events] == [
        (0, digest(1), (10, 11, 12, 13)),
        (2, digest(3), (5,)),
    ]


def test_unadmitted_account_cannot_anchor(chain: ChainUnderTest) -> None:
    ls = ledgers(chain, 3)
    peers = _admit(ls[:2])
    outsider = ls[2]
    assert revert_reason(outsider.anchor_round, 0, digest(1), digest(1), [(peers[0], 1)]) == (
        "not-admitted"
    )


def _equivocation(author_seed: int) -> EquivocationProof:
    liar = ident(author_seed)
    a = sign_entry(liar, 0, GENESIS_PREV, Kind.JOINED_RUN, 1, encode_payload(JoinedRun("a")))
    b = sign_entry(liar, 0, GENESIS_PREV, Kind.JOINED_RUN, 1, encode_payload(JoinedRun("b")))
    return EquivocationProof(a, b)


def test_equivocation_proof_bans_and_slashes(chain: ChainUnderTest, tmp_path: object) -> None:
    ls = ledgers(chain, 3)
    peers = _admit(ls, stake=ETH)
    # The proof comes out of a real feed noticing the second entry.
    liar_proof = _equivocation(2)  # ident(2) is peers[1]
    with FeedStore(os.path.join(str(tmp_path), "f.sqlite")) as store:
        store.ingest(liar_proof.a)
        _, proof = store.ingest(liar_proof.b)
    assert proof is not None
    reporter = ls[2]
    balance = chain.w3.eth.get_balance(reporter.account.address)
    reporter.submit_equivocation(proof)
    assert reporter.is_banned(peers[1]) and not reporter.is_admitted(peers[1])
    assert reporter.stake(peers[1]) == 0
    # The reporter got the stake (minus its gas).
    assert chain.w3.eth.get_balance(reporter.account.address) > balance + ETH // 2
    assert revert_reason(reporter.submit_equivocation, proof) == "already-banned"
    assert revert_reason(ls[1].anchor_round, 0, digest(1), digest(1), [(peers[0], 1)]) == (
        "not-admitted"
    )
    assert revert_reason(ls[0].anchor_round, 0, digest(1), digest(1), [(peers[1], 1)]) == (
        "peer-not-admitted"
    )
    (ev,) = reporter.equivocation_events()
    assert ev.peer == peers[1] and ev.reporter == peers[2] and ev.slashed == ETH
    assert {ev.header_a, ev.header_b} == {proof.a.header, proof.b.header}


def test_contract_checks_proof_structure(chain: ChainUnderTest) -> None:
    ls = ledgers(chain, 3)
    peers = _admit(ls)
    good = _equivocation(2)
    later = sign_entry(ident(2), 1, good.a.hash, Kind.JOINED_RUN, 1, b"")
    fn = ls[2].contract.functions.submit_equivocation
    cases = {
        "different-seq": (good.a.header, good.a.signature, later.header, later.signature),
        "same-entry": (good.a.header, good.a.signature, good.a.header, good.a.signature),
        "bad-header": (b"x" * 121, good.a.signature, good.b.header, good.b.signature),
        "self-report": None,
    }
    for reason, args in cases.items():
        if args is None:
            continue
        assert revert_reason(ls[2]._transact, fn(ls[2].run_id, *args), 300_000) == reason
    # Reporting yourself earns nothing.
    assert revert_reason(ls[1].submit_equivocation, good) == "self-report"
    stranger = _equivocation(77)
    assert revert_reason(ls[2].submit_equivocation, stranger) == "unknown-peer"
    assert not ls[0].is_banned(peers[1])


def test_cancun_build_breaks_on_a_shanghai_node_and_shanghai_build_works(
    hardhat_url: str,
) -> None:
    """Why the EVM-version option exists: the Hardhat node here runs the shanghai fork,
    and the cancun build's MCOPY (used to copy the proof bytes) is invalid there."""
    from shoal.ledger.backends import rpc_web3

    from .conftest import hardhat_keys

    w3 = rpc_web3(hardhat_url)
    keys = hardhat_keys()
    for evm in ("shanghai", "cancun"):
        address = deploy_contract(w3, Account.from_key(keys[0]), evm_version=evm)
        ls = [ChainLedger(w3, keys[i], address, os.urandom(32)) for i in range(3)]
        ls[0].run_id = ls[1].run_id = ls[2].run_id
        _admit(ls)
        if evm == "shanghai":
            ls[2].submit_equivocation(_equivocation(2))
            assert ls[2].is_banned(ident(2).peer_id)
        else:
            assert revert_reason(ls[2].submit_equivocation, _equivocation(2)) == "invalid-opcode"


def test_forged_proof_passes_the_contract_but_verifiers_flag_it(chain: ChainUnderTest) -> None:
    """The trust limit, shown: the EVM checks proofs only structurally, so an admitted
    reporter can get a peer banned with garbage signatures; every verifier re-checks
    the signatures from the event and names the false accuser."""
    from shoal.ledger.verify import check_onchain_proofs

    ls = ledgers(chain, 3)
    peers = _admit(ls)
    real = _equivocation(2)
    forged_b = type(real.b)(real.b.author, real.b.seq, real.b.prev_hash, real.b.kind,
                            real.b.timestamp_ms, b"other", bytes(64))  # fmt: skip
    fn = ls[2].contract.functions.submit_equivocation(
        ls[2].run_id, real.a.header, real.a.signature, forged_b.header, forged_b.signature
    )
    ls[2]._transact(fn, 300_000)
    assert ls[0].is_banned(peers[1])
    (warning,) = check_onchain_proofs(ls[0])
    assert warning.startswith("FALSE equivocation proof") and peers[2].short() in warning
