"""Compiled contract artifacts, cached in the repo next to their source.

``contracts/build/<Name>.<evm>.json`` holds the ABI, the bytecode, the vyper version
and the SHA-256 of the source it was built from. Loading checks that hash against the
source on disk: a stale cache is rebuilt when ``vyper`` is importable and refused
otherwise, so a deployed contract always matches the reviewed source.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CONTRACTS_DIR = Path(__file__).resolve().parents[3] / "contracts"
LEDGER_CONTRACT = "ShoalLedger"
# Shanghai: the newest fork Hardhat 2.x, geth and most L2s all run; vyper 0.4 would
# otherwise default to cancun opcodes (MCOPY, TSTORE) that older nodes reject.
DEFAULT_EVM_VERSION = "shanghai"
EVM_VERSIONS = ("london", "paris", "shanghai", "cancun")


class ArtifactError(RuntimeError):
    """No artifact matching the contract source could be loaded or built."""


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    evm_version: str
    source_sha256: str


def source_path(name: str) -> Path:
    return CONTRACTS_DIR / f"{name}.vy"


def artifact_path(name: str, evm_version: str) -> Path:
    return CONTRACTS_DIR / "build" / f"{name}.{evm_version}.json"


def _source_hash(name: str) -> str:
    return hashlib.sha256(source_path(name).read_bytes()).hexdigest()


def compile_contract(name: str, evm_version: str = DEFAULT_EVM_VERSION) -> Artifact:
    """Compile with the vyper package (no solc binary) and write the cache file."""
    if evm_version not in EVM_VERSIONS:
        raise ArtifactError(f"unknown EVM version {evm_version!r}; pick one of {EVM_VERSIONS}")
    try:
        import vyper
        from vyper.compiler.settings import Settings
    except ImportError as exc:
        raise ArtifactError("the vyper package is not installed; pip install vyper") from exc
    src = source_path(name)
    out = vyper.compile_code(
        src.read_text(),
        contract_path=src.name,
        output_formats=["abi", "bytecode"],
        settings=Settings(evm_version=evm_version),
    )
    art = Artifact(name, out["abi"], out["bytecode"], evm_version, _source_hash(name))
    path = artifact_path(name, evm_version)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": name,
        "vyper_version": vyper.__version__,
        "evm_version": evm_version,
        "source_sha256": art.source_sha256,
        "abi": art.abi,
        "bytecode": art.bytecode,
    }
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    log.info("compiled %s for %s -> %s", name, evm_version, path)
    return art


def load_artifact(name: str = LEDGER_CONTRACT, evm_version: str = DEFAULT_EVM_VERSION) -> Artifact:
    path = artifact_path(name, evm_version)
    want = _source_hash(name)
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        doc = None
    if doc is not None and doc.get("source_sha256") == want:
        return Artifact(name, doc["abi"], doc["bytecode"], evm_version, want)
    log.info("artifact %s is missing or stale; compiling", path)
    return compile_contract(name, evm_version)
