"""`shoal ledger create-run / allow / join` against the independent Hardhat node."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from shoal.cli.main import app
from shoal.identity.keys import Identity
from shoal.ledger.backends import ChainRecord, rpc_web3, write_chain_key
from shoal.ledger.chain import ChainLedger

from .conftest import hardhat_keys


def test_create_run_allow_join_over_json_rpc(hardhat_url: str, tmp_path: Path) -> None:
    keys = hardhat_keys()
    key_files = []
    for i in (0, 1, 2):
        write_chain_key(tmp_path / f"k{i}", keys[i])
        key_files.append(str(tmp_path / f"k{i}"))
    cli = CliRunner()
    run_dir, node_dir, stranger_dir = tmp_path / "run", tmp_path / "node", tmp_path / "stranger"
    res = cli.invoke(
        app,
        [
            "ledger",
            "create-run",
            "--data-dir",
            str(run_dir),
            "--chain-rpc",
            hardhat_url,
            "--chain-key",
            key_files[0],
            "--run",
            f"cli-{tmp_path.name}",
        ],
    )
    assert res.exit_code == 0, res.output
    rec = ChainRecord.load(run_dir)
    assert rec.rpc_url == hardhat_url and rec.evm_version == "shanghai"
    again = cli.invoke(
        app,
        [
            "ledger",
            "create-run",
            "--data-dir",
            str(run_dir),
            "--chain-rpc",
            hardhat_url,
            "--chain-key",
            key_files[0],
            "--run",
            f"cli-{tmp_path.name}",
            "--contract",
            rec.contract,
        ],
    )
    assert again.exit_code == 1 and "run-exists" in again.output
    node_addr = ChainLedger(rpc_web3(hardhat_url), keys[1], rec.contract, b"\0" * 32).account
    res = cli.invoke(
        app,
        [
            "ledger",
            "allow",
            node_addr.address,
            "--data-dir",
            str(run_dir),
            "--chain-key",
            key_files[0],
        ],
    )
    assert res.exit_code == 0, res.output
    record = str(run_dir / "ledger" / "chain.json")
    res = cli.invoke(
        app,
        [
            "ledger",
            "join",
            "--data-dir",
            str(node_dir),
            "--record",
            record,
            "--chain-key",
            key_files[1],
        ],
    )
    assert res.exit_code == 0, res.output
    me = Identity.load_or_create(node_dir / "node.key").peer_id
    lg = ChainLedger(rpc_web3(hardhat_url), keys[1], rec.contract, bytes.fromhex(rec.run_id))
    assert lg.is_admitted(me)
    assert (node_dir / "ledger" / "chain.json").exists()
    assert (node_dir / "ledger" / "chain.key").stat().st_mode & 0o777 == 0o600
    # Not allow-listed: refused with the contract's reason, nothing written.
    res = cli.invoke(
        app,
        [
            "ledger",
            "join",
            "--data-dir",
            str(stranger_dir),
            "--record",
            record,
            "--chain-key",
            key_files[2],
        ],
    )
    assert res.exit_code == 1 and "not-allowed" in res.output
    assert not (stranger_dir / "ledger" / "chain.json").exists()
