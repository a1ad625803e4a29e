"""The chaos suite's ledger: one dev chain that every testbed host reaches, the run
and its admitted nodes, and the checks on feeds and anchors after a chaos scenario.

Layout. ``shoal chain`` serves loopback only, so it runs inside the testnet's switch
namespace on 127.0.0.1, and ``rpc_relay.py`` (same namespace) forwards the bridge's
own address ``CHAIN_ADDR:CHAIN_PORT`` to it. Every host reaches that address over its
wan link (delay, 1% loss), and a partition never cuts it: the chain stands for a
public chain that both sides of a split can see. Setup and reads run inside the
switch namespace too (``python chaos_ledger.py setup|read ...``), since the harness's
own namespace cannot reach that loopback. Both processes are ended by their PIDs.

"Feed heads" (what the suite compares across live peers): for every author whose
feed a peer holds, the (author, seq, entry hash) of the newest entry it holds of that
feed, read from the peer's ``ledger/feed.sqlite`` after it exited (each feed is
re-verified from its first entry on the way).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHAIN_ADDR = "10.231.0.254"  # on br0 in the switch namespace; hosts are .1-.200
CHAIN_PORT = 8545
START_TIMEOUT_S = 60.0
# Setup sends ~3 transactions per node; reads walk every anchor event.
HELPER_TIMEOUT_S = 300.0
STOP_WAIT_S = 15.0
FUND_WEI = 10 * 10**18  # far above a run's anchor gas at the dev chain's gas price


# -- in the switch namespace (``python chaos_ledger.py ...``) ------------------------------
def _setup(args: argparse.Namespace) -> dict[str, Any]:
    from eth_account import Account

    from shoal.ledger.artifacts import DEFAULT_EVM_VERSION
    from shoal.ledger.backends import ChainRecord, rpc_web3
    from shoal.ledger.chain import POLICY_ALLOWLIST, ChainLedger, deploy_contract
    from shoal.ledger.devchain import dev_private_keys

    w3 = rpc_web3(args.rpc)
    owner_key = dev_private_keys()[0]
    owner_acct = Account.from_key(owner_key)
    address = deploy_contract(w3, owner_acct)
    run_id = hashlib.sha256(f"{args.run}/{time.time_ns()}".encode()).digest()
    owner = ChainLedger(w3, owner_key, address, run_id)
    owner.create_run(POLICY_ALLOWLIST)
    record = ChainRecord(address, run_id.hex(), w3.eth.chain_id, DEFAULT_EVM_VERSION, args.rpc)
    record.save(Path(args.out))
    peers = _admit(args, w3, owner, record)
    return {"contract": address, "run_id": run_id.hex(), "peers": peers}


def _admit_cmd(args: argparse.Namespace) -> dict[str, Any]:
    from shoal.ledger.backends import ChainRecord, rpc_web3
    from shoal.ledger.chain import ChainLedger
    from shoal.ledger.devchain import dev_private_keys

    record = ChainRecord.load(Path(args.out))
    w3 = rpc_web3(args.rpc)
    owner = ChainLedger(w3, dev_private_keys()[0], record.contract, bytes.fromhex(record.run_id))
    return {"peers": _admit(args, w3, owner, record)}


def _admit(args: argparse.Namespace, w3: Any, owner: Any, record: Any) -> dict[str, str]:
    """Each node dir gets a node key, a funded chain account (admitted, registered to
    that key) and a chain.json that names the address the hosts reach."""
    from eth_account import Account

    from shoal.identity.keys import Identity
    from shoal.ledger.backends import ChainRecord, write_chain_key
    from shoal.ledger.chain import ChainLedger
    from shoal.ledger.training_hook import CHAIN_KEY_PATH

    peers = {}
    for d in map(Path, args.node_dir):
        d.mkdir(parents=True, exist_ok=True)
        ident = Identity.load_or_create(d / "node.key")  # runtime/node.py's KEY_FILE
        acct = Account.create()
        _fund(w3, owner.account, acct.address)
        write_chain_key(d / CHAIN_KEY_PATH, bytes(acct.key))
        owner.allow(acct.address)
        ChainLedger(w3, acct, record.contract, owner.run_id).register_peer(ident.peer_id)
        ChainRecord(record.contract, record.run_id, record.chain_id, record.evm_version,
                    args.public_rpc).save(d)  # fmt: skip
        peers[str(d)] = str(ident.peer_id)
    return peers


def _fund(w3: Any, src: Any, to: str) -> None:
    tx = {
        "to": to, "value": FUND_WEI, "gas": 21_000, "gasPrice": w3.eth.gas_price,
        "nonce": w3.eth.get_transaction_count(src.address, "pending"),
        "chainId": w3.eth.chain_id,
    }  # fmt: skip
    tx_hash = w3.eth.send_raw_transaction(src.sign_transaction(tx).raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.02)
    assert receipt["status"] == 1, receipt


def _read(args: argparse.Namespace) -> dict[str, Any]:
    """Every anchor event (in chain order), the contract's view of each anchored round,
    equivocation events, and optionally ``shoal verify`` of a checkpoint."""
    from shoal.ledger.backends import ChainRecord, rpc_web3
    from shoal.ledger.chain import ChainLedger
    from shoal.ledger.devchain import dev_private_keys

    record = ChainRecord.load(Path(args.out))
    w3 = rpc_web3(args.rpc)
    lg = ChainLedger(w3, dev_private_keys()[0], record.contract, bytes.fromhex(record.run_id))
    anchors = []
    for a in lg.anchor_events():
        view = lg.anchor(a.round)
        anchors.append({
            "round": a.round, "feeds_root": a.feeds_root.hex(), "model_hash": a.model_hash.hex(),
            "submitter": str(a.submitter), "peers": [str(p) for p in a.peers],
            "credits": list(a.credits), "block": a.block,
            "view": None if view is None else [view[0].hex(), view[1].hex(), str(view[2])],
        })  # fmt: skip
    out: dict[str, Any] = {
        "anchors": anchors,
        "equivocations": [str(e.peer) for e in lg.equivocation_events()],
    }
    if args.checkpoint:
        from shoal.ledger.verify import LineageError, find_feed_files, verify_lineage

        try:
            rep = verify_lineage(Path(args.checkpoint), find_feed_files(Path(args.data_dir)), lg)
            out["verify"] = {"ok": True, "round": rep.round, "model_hash": rep.model_hash,
                             "steps": [s for s, _ in rep.steps]}  # fmt: skip
        except LineageError as exc:
            out["verify"] = {"ok": False, "step": exc.step, "error": exc.message}
    return out


def _main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["setup", "admit", "read"])
    p.add_argument("--rpc", required=True)
    p.add_argument("--public-rpc", default="")
    p.add_argument("--out", required=True)
    p.add_argument("--run", default="chaos")
    p.add_argument("--node-dir", action="append", default=[])
    p.add_argument("--checkpoint", default="")
    p.add_argument("--data-dir", default="")
    args = p.parse_args()
    fn = {"setup": _setup, "admit": _admit_cmd, "read": _read}[args.cmd]
    sys.stdout.write(json.dumps(fn(args)) + "\n")


# -- in the harness ---------------------------------------------------------------------
@dataclass
class ChaosChain:
    """The dev chain and its relay, inside the testnet's switch namespace."""

    switch_ns: str
    out: Path
    chain: subprocess.Popen[bytes]
    relay: subprocess.Popen[bytes]
    local_url: str  # inside the switch namespace
    public_url: str = f"http://{CHAIN_ADDR}:{CHAIN_PORT}"  # what the hosts use

    @classmethod
    def start(cls, net_name: str, out: Path) -> ChaosChain:
        sw = f"shoal-{net_name}-sw"
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ip", "-n", sw, "addr", "add", f"{CHAIN_ADDR}/24", "dev", "br0"],
                       check=True, capture_output=True, timeout=30)  # fmt: skip
        chain = _popen_in(
            sw,
            out / "chain.log",
            ["-m", "shoal.cli.main", "chain", "--data-dir", str(out), "--port", "0"],
        )
        relay = None
        try:
            url = _first_line(chain, out / "chain.log")
            if not url.startswith("http://127.0.0.1:"):
                raise RuntimeError(f"the dev chain did not start: {url!r}")
            relay = _popen_in(
                sw,
                out / "relay.log",
                [
                    str(REPO / "tests" / "testbed" / "rpc_relay.py"),
                    f"{CHAIN_ADDR}:{CHAIN_PORT}",
                    url.removeprefix("http://"),
                    str(out),
                ],
            )  # fmt: skip  (the out dir tags it in `ps`)
            if _first_line(relay, out / "relay.log") != "ready":
                raise RuntimeError("the RPC relay did not start")
        except BaseException:
            for p in (chain, relay):
                if p is not None:
                    _stop(p)
            raise
        return cls(sw, out, chain, relay, url)

    def helper(self, *argv: str) -> dict[str, Any]:
        """Run this file's CLI in the switch namespace; its JSON answer."""
        cmd = ["ip", "netns", "exec", self.switch_ns, sys.executable, str(Path(__file__)),
               *argv, "--rpc", self.local_url, "--out", str(self.out)]  # fmt: skip
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=HELPER_TIMEOUT_S,
                           cwd=REPO)  # fmt: skip
        assert p.returncode == 0, (argv[0], p.stdout[-2000:], p.stderr[-4000:])
        out: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
        return out

    def setup_run(self, node_dirs: list[Path], run: str = "chaos") -> dict[str, str]:
        """Deploy, create the run and admit ``node_dirs``; data dir -> peer id."""
        args = ["setup", "--run", run, "--public-rpc", self.public_url]
        res = self.helper(*args, *itertools.chain(*(("--node-dir", str(d)) for d in node_dirs)))
        peers: dict[str, str] = res["peers"]
        return peers

    def admit(self, node_dirs: list[Path]) -> dict[str, str]:
        args = ["admit", "--public-rpc", self.public_url]
        res = self.helper(*args, *itertools.chain(*(("--node-dir", str(d)) for d in node_dirs)))
        peers: dict[str, str] = res["peers"]
        return peers

    def read(self, checkpoint: Path | None = None, data_dir: Path | None = None) -> dict[str, Any]:
        args = ["read"]
        if checkpoint is not None and data_dir is not None:
            args += ["--checkpoint", str(checkpoint), "--data-dir", str(data_dir)]
        return self.helper(*args)

    @property
    def pids(self) -> list[int]:
        return [self.chain.pid, self.relay.pid]

    def close(self) -> None:
        _stop(self.relay)
        _stop(self.chain)  # SIGTERM: it closes its tx log, then exits


def _popen_in(ns: str, log: Path, argv: list[str]) -> subprocess.Popen[bytes]:
    with open(log, "ab") as logf:
        # ``ip netns exec`` execs, so the PID is the Python process's own
        return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, *argv],
                                stdout=subprocess.PIPE, stderr=logf, stdin=subprocess.DEVNULL,
                                cwd=REPO)  # fmt: skip


def _first_line(p: subprocess.Popen[bytes], log: Path) -> str:
    """The process's first stdout line, within START_TIMEOUT_S."""
    assert p.stdout is not None
    os.set_blocking(p.stdout.fileno(), False)
    buf = b""
    deadline = time.monotonic() + START_TIMEOUT_S
    while b"\n" not in buf and time.monotonic() < deadline and p.poll() is None:
        with contextlib.suppress(BlockingIOError):
            buf += p.stdout.read() or b""
        time.sleep(0.05)
    p.stdout.close()  # nothing more is read; later writes get EPIPE, not a full pipe
    if b"\n" not in buf:
        raise RuntimeError(f"no start line from {p.args!r}; see {log}")
    return buf.split(b"\n", 1)[0].decode().strip()


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        os.kill(p.pid, signal.SIGTERM)  # by its own PID
        try:
            p.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=STOP_WAIT_S)


# -- checks after a scenario (the harness, offline: the peers have exited) ---------------
FEED = Path("ledger") / "feed.sqlite"
Heads = dict[str, tuple[int, str]]  # author -> (seq, entry hash) of the newest entry held


def feed_heads(data_dir: Path) -> Heads:
    """The feed heads a peer holds; every feed re-verified, and no equivocation seen."""
    from shoal.ledger.feed import FeedStore, check_feed

    out: Heads = {}
    with FeedStore(data_dir / FEED) as store:
        for author in store.authors():
            entries = store.entries(author)
            check_feed(entries)  # from seq 0: signatures, order, hash links
            out[str(author)] = (entries[-1].seq, entries[-1].hash.hex())
        assert store.proofs() == [], f"{data_dir}: equivocation proofs stored"
    return out


def _peer_id(data_dir: Path) -> str:
    from shoal.identity.keys import Identity

    path = data_dir / "node.key"
    assert path.exists(), path
    return str(Identity.load_or_create(path).peer_id)


def _aggregates(data_dir: Path) -> dict[tuple[str, int], Any]:
    """(author, round) -> RoundAggregate, over every feed ``data_dir`` holds; checks
    that each author's aggregates only move forward."""
    from shoal.ledger.entry import Kind
    from shoal.ledger.feed import FeedStore
    from shoal.ledger.payloads import RoundAggregate, payload_of

    out: dict[tuple[str, int], Any] = {}
    with FeedStore(data_dir / FEED) as store:
        for author in store.authors():
            rounds = []
            for e in store.entries(author):
                if e.kind == Kind.ROUND_AGGREGATE:
                    agg = payload_of(e)
                    assert isinstance(agg, RoundAggregate)
                    rounds.append(agg.round)
                    out[(str(author), agg.round)] = agg
            assert all(b > a for a, b in itertools.pairwise(rounds)), (str(author), rounds)
    return out


def check_ledger(
    chain: ChaosChain, live: dict[str, Path], results: dict[str, dict[str, Any]],
    dead: dict[str, Path] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """(b) feed heads, (c) anchors; ``live``/``results`` by host, ``dead``: the data dirs
    of killed peers. Returns what was measured."""
    from shoal.ledger.merkle import feeds_root

    dead = dead or {}
    heads = {h: feed_heads(d) for h, d in live.items()}
    ref_host, ref = next(iter(heads.items()))
    diff = {h: sorted(set(v.items()) ^ set(ref.items())) for h, v in heads.items() if v != ref}
    assert not diff, f"feed heads differ from {ref_host}'s: {diff}"
    mine = {results[h]["peer_id"] for h in live}
    assert mine <= ref.keys(), mine - ref.keys()  # every live peer's feed, everywhere
    # A killed peer's own disk holds every entry the survivors got from it: nothing
    # it acknowledged was lost, and it never wrote a different entry at that seq.
    from shoal.identity.keys import PeerId
    from shoal.ledger.feed import FeedStore

    aggs = _aggregates(live[ref_host])
    contributors = {str(c.author) for agg in aggs.values() for c in agg.contributors}
    unreplicated = []
    for h, d in dead.items():
        pid = _peer_id(d)
        if pid not in ref:
            # killed before it gossiped anything; then no aggregate can have used it
            assert pid not in contributors, (h, "used, yet its feed is nowhere")
            unreplicated.append(h)
            continue
        seq, want = ref[pid]
        with FeedStore(d / FEED) as own:
            got = own.get(PeerId.parse(pid), seq)
        assert got is not None and got.hash.hex() == want, (h, seq, want)
    settle = {h: (results[h]["ledger"] or {}).get("settle") for h in live}

    state = chain.read(Path(results[ref_host]["checkpoint"]), live[ref_host])
    assert state["equivocations"] == [], state["equivocations"]
    anchors = state["anchors"]
    rounds = [a["round"] for a in anchors]
    assert rounds, "no round was anchored"
    assert all(b > a for a, b in itertools.pairwise(rounds)), rounds  # only forward
    hist = {h: {e["round"]: e["model_hash"] for e in r["history"]} for h, r in results.items()}
    by_peer = {results[h]["peer_id"]: h for h in results}
    checked = 0
    mixed: list[list[Any]] = []  # (round, contributor): its own model differs from the anchor's
    for a in anchors:
        rnd = a["round"]
        # the contract still holds exactly what was anchored (never overwritten)
        assert a["view"] == [a["feeds_root"], a["model_hash"], a["submitter"]], a
        agg = aggs.get((a["submitter"], rnd))
        assert agg is not None, f"round {rnd}: anchor without its aggregate entry"
        assert (agg.model_hash.hex(), agg.feeds_root.hex()) == (a["model_hash"], a["feeds_root"])
        assert feeds_root(agg.contributors).hex() == a["feeds_root"]
        assert sorted(str(c.author) for c in agg.contributors) == sorted(a["peers"])
        assert [c.samples for c in sorted(agg.contributors, key=lambda c: str(c.author))] == [
            cr for _, cr in sorted(zip(a["peers"], a["credits"], strict=True))
        ]  # each contributor credited with the samples it committed
        # What the live peers recorded for this round (history counts rounds done, so
        # aggregate round r is history round r + 1). Where they agree, the anchor is it.
        models = {hist[h][rnd + 1] for h in hist if rnd + 1 in hist[h]}
        sub = by_peer.get(a["submitter"])
        if sub is not None and rnd + 1 in hist[sub]:
            assert hist[sub][rnd + 1] == a["model_hash"], (sub, rnd)
            checked += 1
        if len(models) == 1 and len(hist) == sum(rnd + 1 in v for v in hist.values()):
            assert models == {a["model_hash"]}, (rnd, models, a["model_hash"])
            checked += 1
        for peer in a["peers"]:
            other = aggs.get((peer, rnd))
            if other is not None and other.model_hash.hex() != a["model_hash"]:
                # A group whose members started from different states (the round a
                # partition healed): each member records its own start - the average.
                assert len(models) > 1 or peer not in by_peer, (rnd, peer, models)
                mixed.append([rnd, by_peer.get(peer, peer[:12])])
    for h, r in results.items():  # each round a peer says it anchored is on-chain
        assert set((r["ledger"] or {}).get("anchored_rounds", [])) <= set(rounds), h
    final = {r["final_model_hash"] for r in results.values()}
    last = max(r["rounds"] for r in results.values()) - 1
    final_anchor = [a for a in anchors if a["round"] == last]
    assert final_anchor and {final_anchor[0]["model_hash"]} == final, (final_anchor, final)
    assert state["verify"]["ok"], state["verify"]  # shoal verify of a final checkpoint
    return {
        "feeds": len(ref),
        "killed_feeds_never_gossiped": unreplicated,
        "settle_s": sorted(s["settle_s"] for s in settle.values() if s),
        "settled": sum(bool(s and s["converged"]) for s in settle.values()),
        "anchored_rounds": rounds,
        "anchor_model_checks": checked,
        "mixed_state_contributors": mixed,
    }


if __name__ == "__main__":
    _main()
