"""The testnet's state file: what ``up`` built, so ``down``/``status`` need no guessing
and a second ``up`` is a no-op."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shoal.testbed.profiles import LinkProfile

DEFAULT_STATE_DIR = Path("/run/shoal-testnet")


def state_dir() -> Path:
    return Path(os.environ.get("SHOAL_TESTNET_STATE_DIR", str(DEFAULT_STATE_DIR)))


@dataclass
class HostState:
    name: str
    netns: str
    addr: str
    rate_mbit: float
    loss_pct: float
    delayer_pid: int | None = None


@dataclass
class TestnetState:
    name: str
    profile: LinkProfile
    delay: str  # "netem", "nfqueue" or "none"
    iptables: str | None
    hosts: list[HostState]
    partition: list[list[str]] = field(default_factory=list)
    complete: bool = False

    def host(self, name: str) -> HostState:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TestnetState:
        return cls(
            name=d["name"],
            profile=LinkProfile(**d["profile"]),
            delay=d["delay"],
            iptables=d.get("iptables"),
            hosts=[HostState(**h) for h in d["hosts"]],
            partition=d.get("partition", []),
            complete=bool(d.get("complete", False)),
        )


def state_path(name: str) -> Path:
    return state_dir() / f"{name}.json"


def log_dir(name: str) -> Path:
    return state_dir() / f"{name}.logs"


def load(name: str) -> TestnetState | None:
    path = state_path(name)
    try:
        return TestnetState.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None  # a torn or foreign file: ``down`` still cleans up by name prefix


def save(st: TestnetState) -> None:
    path = state_path(st.name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(st.to_json(), indent=1))
    tmp.replace(path)


def remove(name: str) -> None:
    state_path(name).unlink(missing_ok=True)
