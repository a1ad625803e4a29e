"""Validators for message fields decoded from untrusted peers.

Each raises MalformedMessage naming the field, so errors say what was wrong.
"""

from __future__ import annotations

import math
from typing import Any

from shoal.identity.keys import PEER_ID_BYTES, PeerId
from shoal.wire.codec import MalformedMessage
from shoal.wire.limits import MAX_LIST_ITEMS, MAX_STRING_BYTES


def expect_len(fields: list[Any], n: int, what: str) -> None:
    if len(fields) != n:
        raise MalformedMessage(f"{what}: expected {n} fields, got {len(fields)}")


def as_bytes(x: Any, name: str, max_len: int, exact: int | None = None) -> bytes:
    if not isinstance(x, bytes):
        raise MalformedMessage(f"{name}: expected bytes, got {type(x).__name__}")
    if exact is not None and len(x) != exact:
        raise MalformedMessage(f"{name}: expected {exact} bytes, got {len(x)}")
    if len(x) > max_len:
        raise MalformedMessage(f"{name}: {len(x)} bytes exceeds the limit of {max_len}")
    return x


def as_int(x: Any, name: str, lo: int = 0, hi: int = 2**64 - 1) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise MalformedMessage(f"{name}: expected an integer, got {type(x).__name__}")
    if not lo <= x <= hi:
        raise MalformedMessage(f"{name}: {x} outside [{lo}, {hi}]")
    return x


def as_float(x: Any, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise MalformedMessage(f"{name}: expected a number, got {type(x).__name__}")
    f = float(x)
    if not math.isfinite(f):
        raise MalformedMessage(f"{name}: must be finite, got {f}")
    return f


def as_str(x: Any, name: str, max_len: int = MAX_STRING_BYTES) -> str:
    if not isinstance(x, str):
        raise MalformedMessage(f"{name}: expected a string, got {type(x).__name__}")
    if len(x.encode()) > max_len:
        raise MalformedMessage(f"{name}: longer than {max_len} bytes")
    return x


def as_list(x: Any, name: str, max_items: int = MAX_LIST_ITEMS) -> list[Any]:
    if not isinstance(x, list):
        raise MalformedMessage(f"{name}: expected a list, got {type(x).__name__}")
    if len(x) > max_items:
        raise MalformedMessage(f"{name}: {len(x)} items exceeds the limit of {max_items}")
    return x


def as_peer_id(x: Any, name: str) -> PeerId:
    return PeerId(as_bytes(x, name, PEER_ID_BYTES, exact=PEER_ID_BYTES))
