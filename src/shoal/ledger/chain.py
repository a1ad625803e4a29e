"""The on-chain half of the ledger: one ``Ledger`` interface over web3.py.

Two backends share every line of contract code below and differ only in how web3
reaches a chain (``backends.py``): the embedded dev chain in this process, or any
Ethereum JSON-RPC endpoint (``shoal chain``, Hardhat, geth...). Transactions are
signed here with the account's key and sent raw, so both backends see identical
bytes.

Reverts are normalised: whatever each backend raises (eth-tester's TransactionFailed,
web3's ContractLogicError, a JSON-RPC error, a status-0 receipt), callers get
``LedgerRevert(reason)`` where ``reason`` is the contract's ``shoal:<reason>`` code.
Gas limits are fixed per function (no estimateGas, whose answers differ by node), and
a preflight ``eth_call`` surfaces the revert reason before any gas is spent.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from shoal.identity.keys import PeerId
from shoal.ledger.artifacts import DEFAULT_EVM_VERSION, load_artifact
from shoal.ledger.entry import HEADER_BYTES
from shoal.ledger.equivocation import EquivocationProof
from shoal.ledger.limits import MAX_CONTRIBUTORS

log = logging.getLogger(__name__)

POLICY_ALLOWLIST = 0
POLICY_STAKE = 1

# Fixed gas limits, measured with margin (tests assert gasUsed stays below them).
GAS_DEPLOY = 3_000_000
GAS_CREATE_RUN = 150_000
GAS_ALLOW = 80_000
GAS_REGISTER = 200_000
GAS_EQUIVOCATION = 300_000
GAS_ANCHOR_BASE = 250_000
GAS_ANCHOR_PER_PEER = 60_000
# A receipt that has not appeared after this long means the node dropped the tx.
RECEIPT_TIMEOUT_S = 60.0
# eth_getLogs block span per request: public nodes cap ranges (often 10k blocks).
LOG_BLOCK_SPAN = 5_000

_REASON = re.compile(r"shoal:([a-z-]+)")


class LedgerError(RuntimeError):
    """The chain could not be reached or answered something unexpected."""


class LedgerRevert(LedgerError):
    """The contract refused the call; ``reason`` is its ``shoal:<reason>`` code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"contract reverted: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason


def normalise_revert(exc: BaseException) -> LedgerRevert | None:
    """The LedgerRevert an exception from any backend stands for, or None."""
    texts = [str(exc), *(str(a) for a in getattr(exc, "args", ()))]
    data = getattr(exc, "data", None)
    if data is not None:
        texts.append(str(data))
    for t in texts:
        m = _REASON.search(t)
        if m:
            return LedgerRevert(m.group(1))
    low = " ".join(texts).lower()
    if "invalid opcode" in low:
        # A build for a newer fork than the node runs (e.g. cancun's MCOPY on shanghai).
        return LedgerRevert("invalid-opcode", "deploy a build for the node's EVM version")
    if "revert" in low or "transactionfailed" in type(exc).__name__.lower():
        return LedgerRevert("reverted", texts[0][:200])
    return None


@dataclass(frozen=True)
class AnchorRecord:
    round: int
    feeds_root: bytes
    model_hash: bytes
    submitter: PeerId
    peers: tuple[PeerId, ...]
    credits: tuple[int, ...]
    block: int
    tx_hash: str


@dataclass(frozen=True)
class EquivocationRecord:
    peer: PeerId
    reporter: PeerId
    slashed: int
    header_a: bytes
    sig_a: bytes
    header_b: bytes
    sig_b: bytes


class Ledger(ABC):
    """What shoal needs from a chain, whichever backend is behind it."""

    run_id: bytes

    @abstractmethod
    def create_run(self, policy: int, min_stake: int = 0) -> None: ...
    @abstractmethod
    def allow(self, account: str) -> None: ...
    @abstractmethod
    def register_peer(self, peer: PeerId, stake: int = 0) -> None: ...
    @abstractmethod
    def is_admitted(self, peer: PeerId) -> bool: ...
    @abstractmethod
    def is_banned(self, peer: PeerId) -> bool: ...
    @abstractmethod
    def anchor_round(
        self, round_no: int, feeds_root: bytes, model_hash: bytes,
        credits: Sequence[tuple[PeerId, int]],
    ) -> str: ...  # fmt: skip
    @abstractmethod
    def anchor(self, round_no: int) -> tuple[bytes, bytes, PeerId] | None: ...
    @abstractmethod
    def credits(self, peer: PeerId) -> int: ...
    @abstractmethod
    def round_credit(self, round_no: int, peer: PeerId) -> int: ...
    @abstractmethod
    def submit_equivocation(self, proof: EquivocationProof) -> str: ...
    @abstractmethod
    def anchor_events(self, from_block: int = 0) -> list[AnchorRecord]: ...
    @abstractmethod
    def equivocation_events(self, from_block: int = 0) -> list[EquivocationRecord]: ...


def deploy_contract(w3: Web3, account: LocalAccount, evm_version: str = DEFAULT_EVM_VERSION) -> str:
    art = load_artifact(evm_version=evm_version)
    factory = w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
    tx = factory.constructor().build_transaction(
        {"from": account.address, "gas": GAS_DEPLOY, "nonce": 0, "gasPrice": 0}
    )
    receipt = _send(w3, account, tx)
    address = receipt["contractAddress"]
    if not address:
        raise LedgerError("deployment produced no contract address")
    log.info("deployed ShoalLedger at %s (%s)", address, evm_version)
    return str(address)


def _send(w3: Web3, account: LocalAccount, tx: dict[str, Any], chain_id: int | None = None) -> Any:
    tx = dict(tx)
    tx["nonce"] = w3.eth.get_transaction_count(account.address, "pending")
    tx["gasPrice"] = w3.eth.gas_price
    tx["chainId"] = w3.eth.chain_id if chain_id is None else chain_id
    signed = account.sign_transaction(tx)
    try:
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(
            tx_hash, timeout=RECEIPT_TIMEOUT_S, poll_latency=0.02
        )
    except Exception as exc:
        rev = normalise_revert(exc)
        if rev is not None:
            raise rev from exc
        raise LedgerError(f"sending transaction failed: {exc}") from exc
    if receipt["status"] != 1:
        raise LedgerRevert("reverted", f"tx {tx_hash.to_0x_hex()} status 0")
    return receipt


class ChainLedger(Ledger):
    def __init__(
        self, w3: Web3, account: LocalAccount | bytes, address: str, run_id: bytes
    ) -> None:
        if len(run_id) != 32:
            raise ValueError("a run id is 32 bytes")
        self.w3 = w3
        self.account: LocalAccount = (
            account if isinstance(account, LocalAccount) else Account.from_key(account)
        )
        self.address = Web3.to_checksum_address(address)
        self.run_id = run_id
        self._chain_id: int | None = None
        art = load_artifact()
        self.contract: Contract = w3.eth.contract(address=self.address, abi=art.abi)

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:  # fixed for a chain; one round trip saved per tx
            self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    # -- transactions ----------------------------------------------------------
    def _transact(self, fn: Any, gas: int, value: int = 0) -> Any:
        opts = {"from": self.account.address, "value": value}
        try:
            fn.call(opts)  # preflight: the revert reason, before spending gas
        except Exception as exc:
            rev = normalise_revert(exc)
            if rev is not None:
                raise rev from exc
            raise LedgerError(f"call failed: {exc}") from exc
        tx = fn.build_transaction({**opts, "gas": gas, "nonce": 0, "gasPrice": 0,
                                   "chainId": self.chain_id})  # fmt: skip
        return _send(self.w3, self.account, tx, self.chain_id)

    def create_run(self, policy: int, min_stake: int = 0) -> None:
        self._transact(self.contract.functions.create_run(self.run_id, policy, min_stake),
                       GAS_CREATE_RUN)  # fmt: skip

    def allow(self, account: str) -> None:
        fn = self.contract.functions.allow(self.run_id, Web3.to_checksum_address(account))
        self._transact(fn, GAS_ALLOW)

    def register_peer(self, peer: PeerId, stake: int = 0) -> None:
        fn = self.contract.functions.register_peer(self.run_id, peer.raw)
        self._transact(fn, GAS_REGISTER, value=stake)

    def anchor_round(
        self, round_no: int, feeds_root: bytes, model_hash: bytes,
        credits: Sequence[tuple[PeerId, int]],
    ) -> str:  # fmt: skip
        if not 0 < len(credits) <= MAX_CONTRIBUTORS:
            raise ValueError(f"an anchor lists 1..{MAX_CONTRIBUTORS} peers")
        fn = self.contract.functions.anchor_round(
            self.run_id, round_no, feeds_root, model_hash,
            [p.raw for p, _ in credits], [c for _, c in credits],
        )  # fmt: skip
        gas = GAS_ANCHOR_BASE + GAS_ANCHOR_PER_PEER * len(credits)
        return str(self._transact(fn, gas)["transactionHash"].to_0x_hex())

    def submit_equivocation(self, proof: EquivocationProof) -> str:
        proof.check()
        a, b = proof.a, proof.b
        assert len(a.header) == HEADER_BYTES
        fn = self.contract.functions.submit_equivocation(
            self.run_id, a.header, a.signature, b.header, b.signature
        )
        return str(self._transact(fn, GAS_EQUIVOCATION)["transactionHash"].to_0x_hex())

    # -- reads -----------------------------------------------------------------
    def _view(self, fn: Any) -> Any:
        try:
            # No sender: views ignore it, and a read-only client's account may hold no
            # ETH (eth-tester charges calls for gas; nodes pick a funded default).
            return fn.call()
        except Exception as exc:
            raise LedgerError(f"reading the contract failed: {exc}") from exc

    def is_admitted(self, peer: PeerId) -> bool:
        return bool(self._view(self.contract.functions.is_admitted(self.run_id, peer.raw)))

    def is_banned(self, peer: PeerId) -> bool:
        return bool(self._view(self.contract.functions.banned(self.run_id, peer.raw)))

    def stake(self, peer: PeerId) -> int:
        return int(self._view(self.contract.functions.stake(self.run_id, peer.raw)))

    def anchor(self, round_no: int) -> tuple[bytes, bytes, PeerId] | None:
        root, mh, submitter, _peers, exists = self._view(
            self.contract.functions.anchors(self.run_id, round_no)
        )
        return (bytes(root), bytes(mh), PeerId(bytes(submitter))) if exists else None

    def credits(self, peer: PeerId) -> int:
        return int(self._view(self.contract.functions.credits(self.run_id, peer.raw)))

    def round_credit(self, round_no: int, peer: PeerId) -> int:
        fn = self.contract.functions.round_credit(self.run_id, round_no, peer.raw)
        return int(self._view(fn))

    def _logs(self, event: Any, from_block: int) -> list[Any]:
        latest = self.w3.eth.block_number
        out: list[Any] = []
        start = from_block
        while start <= latest:
            end = min(latest, start + LOG_BLOCK_SPAN - 1)
            out += event.get_logs(
                from_block=start, to_block=end, argument_filters={"run_id": self.run_id}
            )
            start = end + 1
        return out

    def anchor_events(self, from_block: int = 0) -> list[AnchorRecord]:
        return [
            AnchorRecord(
                int(ev.args.round),
                bytes(ev.args.feeds_root),
                bytes(ev.args.model_hash),
                PeerId(bytes(ev.args.submitter)),
                tuple(PeerId(bytes(p)) for p in ev.args.peers),
                tuple(int(c) for c in ev.args.credits),
                int(ev.blockNumber),
                ev.transactionHash.to_0x_hex(),
            )
            for ev in self._logs(self.contract.events.RoundAnchored, from_block)
        ]

    def equivocation_events(self, from_block: int = 0) -> list[EquivocationRecord]:
        return [
            EquivocationRecord(
                PeerId(bytes(ev.args.peer)),
                PeerId(bytes(ev.args.reporter)),
                int(ev.args.slashed),
                bytes(ev.args.header_a),
                bytes(ev.args.sig_a),
                bytes(ev.args.header_b),
                bytes(ev.args.sig_b),
            )
            for ev in self._logs(self.contract.events.EquivocationProven, from_block)
        ]
