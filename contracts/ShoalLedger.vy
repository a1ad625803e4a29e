# pragma version ~=0.4.3
"""
@title shoal ledger: run registry, admission, round anchors, equivocation bans, credits
@notice One contract serves many runs, keyed by a 32-byte run id.
        Peers are Ed25519 public keys bound to the Ethereum account that registered
        them. The EVM cannot check Ed25519 signatures cheaply, so equivocation proofs
        are checked structurally here (same author, same seq, two different signed
        headers) and the raw headers and signatures are kept in the event log, where
        any verifier checks the signatures off-chain. Only admitted peers may submit
        proofs, so a forged proof is attributable to its (staked) reporter.
"""

# One anchor transaction carries every contributor of the round; this bounds its gas.
MAX_PEERS_PER_ROUND: constant(uint256) = 256
# A feed entry header: magic(8) author(32) seq(8) prev_hash(32) kind(1) timestamp(8)
# payload_hash(32); see src/shoal/ledger/entry.py.
HEADER_BYTES: constant(uint256) = 121
HEADER_MAGIC: constant(bytes8) = 0x73686f616c666431  # "shoalfd1"
SIGNATURE_BYTES: constant(uint256) = 64

POLICY_ALLOWLIST: constant(uint8) = 0
POLICY_STAKE: constant(uint8) = 1


struct Run:
    owner: address
    policy: uint8
    min_stake: uint256
    next_round: uint256
    exists: bool


struct Anchor:
    feeds_root: bytes32
    model_hash: bytes32
    submitter: bytes32
    peers: uint256
    exists: bool


event RunCreated:
    run_id: indexed(bytes32)
    owner: address
    policy: uint8
    min_stake: uint256


event PeerAllowed:
    run_id: indexed(bytes32)
    account: address


event PeerRegistered:
    run_id: indexed(bytes32)
    peer: indexed(bytes32)
    account: address
    stake: uint256


event RoundAnchored:
    run_id: indexed(bytes32)
    round: indexed(uint256)
    feeds_root: bytes32
    model_hash: bytes32
    submitter: bytes32
    peers: DynArray[bytes32, MAX_PEERS_PER_ROUND]
    credits: DynArray[uint256, MAX_PEERS_PER_ROUND]


event EquivocationProven:
    run_id: indexed(bytes32)
    peer: indexed(bytes32)
    reporter: bytes32
    slashed: uint256
    header_a: Bytes[HEADER_BYTES]
    sig_a: Bytes[SIGNATURE_BYTES]
    header_b: Bytes[HEADER_BYTES]
    sig_b: Bytes[SIGNATURE_BYTES]


runs: public(HashMap[bytes32, Run])
allowed: public(HashMap[bytes32, HashMap[address, bool]])
peer_account: public(HashMap[bytes32, HashMap[bytes32, address]])
account_peer: public(HashMap[bytes32, HashMap[address, bytes32]])
stake: public(HashMap[bytes32, HashMap[bytes32, uint256]])
banned: public(HashMap[bytes32, HashMap[bytes32, bool]])
anchors: public(HashMap[bytes32, HashMap[uint256, Anchor]])
credits: public(HashMap[bytes32, HashMap[bytes32, uint256]])
round_credit: public(HashMap[bytes32, HashMap[uint256, HashMap[bytes32, uint256]]])


@external
def create_run(run_id: bytes32, policy: uint8, min_stake: uint256):
    assert not self.runs[run_id].exists, "shoal:run-exists"
    assert policy == POLICY_ALLOWLIST or policy == POLICY_STAKE, "shoal:bad-policy"
    self.runs[run_id] = Run(
        owner=msg.sender, policy=policy, min_stake=min_stake, next_round=0, exists=True
    )
    log RunCreated(run_id=run_id, owner=msg.sender, policy=policy, min_stake=min_stake)


@external
def allow(run_id: bytes32, account: address):
    assert self.runs[run_id].exists, "shoal:no-run"
    assert msg.sender == self.runs[run_id].owner, "shoal:not-owner"
    self.allowed[run_id][account] = True
    log PeerAllowed(run_id=run_id, account=account)


@external
@payable
def register_peer(run_id: bytes32, peer: bytes32):
    run: Run = self.runs[run_id]
    assert run.exists, "shoal:no-run"
    assert peer != empty(bytes32), "shoal:bad-peer"
    assert not self.banned[run_id][peer], "shoal:banned"
    assert self.peer_account[run_id][peer] == empty(address), "shoal:peer-taken"
    assert self.account_peer[run_id][msg.sender] == empty(bytes32), "shoal:account-taken"
    if run.policy == POLICY_ALLOWLIST:
        assert self.allowed[run_id][msg.sender], "shoal:not-allowed"
    else:
        assert msg.value >= run.min_stake, "shoal:stake-too-low"
    self.peer_account[run_id][peer] = msg.sender
    self.account_peer[run_id][msg.sender] = peer
    self.stake[run_id][peer] = msg.value
    log PeerRegistered(run_id=run_id, peer=peer, account=msg.sender, stake=msg.value)


@view
@internal
def _admitted(run_id: bytes32, peer: bytes32) -> bool:
    return self.peer_account[run_id][peer] != empty(address) and not self.banned[run_id][peer]


@view
@external
def is_admitted(run_id: bytes32, peer: bytes32) -> bool:
    return self._admitted(run_id, peer)


@external
def anchor_round(
    run_id: bytes32,
    round: uint256,
    feeds_root: bytes32,
    model_hash: bytes32,
    peers: DynArray[bytes32, MAX_PEERS_PER_ROUND],
    credits: DynArray[uint256, MAX_PEERS_PER_ROUND],
):
    run: Run = self.runs[run_id]
    assert run.exists, "shoal:no-run"
    submitter: bytes32 = self.account_peer[run_id][msg.sender]
    assert self._admitted(run_id, submitter), "shoal:not-admitted"
    # Rounds only move forward: an old anchor cannot be replayed or overwritten.
    assert round >= run.next_round, "shoal:stale-round"
    assert len(peers) == len(credits), "shoal:length-mismatch"
    assert len(peers) > 0, "shoal:no-peers"
    for i: uint256 in range(len(peers), bound=MAX_PEERS_PER_ROUND):
        assert self._admitted(run_id, peers[i]), "shoal:peer-not-admitted"
        assert self.round_credit[run_id][round][peers[i]] == 0, "shoal:duplicate-peer"
        assert credits[i] > 0, "shoal:zero-credit"
        self.round_credit[run_id][round][peers[i]] = credits[i]
        self.credits[run_id][peers[i]] += credits[i]
    self.anchors[run_id][round] = Anchor(
        feeds_root=feeds_root,
        model_hash=model_hash,
        submitter=submitter,
        peers=len(peers),
        exists=True,
    )
    self.runs[run_id].next_round = round + 1
    log RoundAnchored(
        run_id=run_id,
        round=round,
        feeds_root=feeds_root,
        model_hash=model_hash,
        submitter=submitter,
        peers=peers,
        credits=credits,
    )


@external
def submit_equivocation(
    run_id: bytes32,
    header_a: Bytes[HEADER_BYTES],
    sig_a: Bytes[SIGNATURE_BYTES],
    header_b: Bytes[HEADER_BYTES],
    sig_b: Bytes[SIGNATURE_BYTES],
):
    assert self.runs[run_id].exists, "shoal:no-run"
    reporter: bytes32 = self.account_peer[run_id][msg.sender]
    assert self._admitted(run_id, reporter), "shoal:not-admitted"
    assert len(header_a) == HEADER_BYTES and len(header_b) == HEADER_BYTES, "shoal:bad-header"
    assert len(sig_a) == SIGNATURE_BYTES and len(sig_b) == SIGNATURE_BYTES, "shoal:bad-signature"
    assert convert(slice(header_a, 0, 8), bytes8) == HEADER_MAGIC, "shoal:bad-header"
    assert convert(slice(header_b, 0, 8), bytes8) == HEADER_MAGIC, "shoal:bad-header"
    author: bytes32 = convert(slice(header_a, 8, 32), bytes32)
    assert author == convert(slice(header_b, 8, 32), bytes32), "shoal:different-authors"
    assert convert(slice(header_a, 40, 8), bytes8) == convert(slice(header_b, 40, 8), bytes8), "shoal:different-seq"
    assert sha256(header_a) != sha256(header_b), "shoal:same-entry"
    assert self.peer_account[run_id][author] != empty(address), "shoal:unknown-peer"
    assert not self.banned[run_id][author], "shoal:already-banned"
    assert author != reporter, "shoal:self-report"
    self.banned[run_id][author] = True
    slashed: uint256 = self.stake[run_id][author]
    self.stake[run_id][author] = 0
    if slashed > 0:
        send(msg.sender, slashed)
    log EquivocationProven(
        run_id=run_id,
        peer=author,
        reporter=reporter,
        slashed=slashed,
        header_a=header_a,
        sig_a=sig_a,
        header_b=header_b,
        sig_b=sig_b,
    )
