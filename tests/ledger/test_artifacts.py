"""Cached contract artifacts match their source; a stale cache is rebuilt."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from shoal.ledger import artifacts
from shoal.ledger.artifacts import (
    EVM_VERSIONS,
    ArtifactError,
    artifact_path,
    compile_contract,
    load_artifact,
    source_path,
)


def test_committed_cache_matches_the_source() -> None:
    want = hashlib.sha256(source_path("ShoalLedger").read_bytes()).hexdigest()
    for evm in ("shanghai", "cancun"):
        doc = json.loads(artifact_path("ShoalLedger", evm).read_text())
        assert doc["source_sha256"] == want, f"stale {evm} artifact: rebuild with compile_contract"
        assert doc["evm_version"] == evm and doc["bytecode"].startswith("0x")


def test_stale_cache_is_recompiled_and_shanghai_avoids_cancun_opcodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(artifacts.CONTRACTS_DIR, tmp_path / "contracts")
    monkeypatch.setattr(artifacts, "CONTRACTS_DIR", tmp_path / "contracts")
    src = source_path("ShoalLedger")
    src.write_text(src.read_text() + "\n# changed\n")
    art = load_artifact("ShoalLedger", "shanghai")
    doc = json.loads(artifact_path("ShoalLedger", "shanghai").read_text())
    assert doc["source_sha256"] == art.source_sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    # MCOPY (0x5e) is cancun-only; the shanghai build must not contain it as an opcode.
    import vyper

    opcodes = vyper.compile_code(
        src.read_text(),
        output_formats=["opcodes"],
        settings=vyper.compiler.settings.Settings(evm_version="shanghai"),
    )
    assert "MCOPY" not in opcodes["opcodes"]
    with pytest.raises(ArtifactError, match="unknown EVM version"):
        compile_contract("ShoalLedger", "frontier")
    assert "shanghai" in EVM_VERSIONS
