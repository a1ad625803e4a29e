"""Versioned msgpack messages.

Every message on the wire is the msgpack array ``[version, type, fields]``:
``version`` is PROTOCOL_VERSION, ``type`` a dotted tag such as ``"dht.find_node"``
(the part before the dot names the protocol core that handles it), and ``fields`` the
message's own list. Each message class validates its fields in ``from_fields`` and
raises MalformedMessage with the field name, so a bad peer gets a precise error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Self

import msgpack

from shoal.wire.limits import MAX_LIST_ITEMS, MAX_MESSAGE_BYTES

PROTOCOL_VERSION = 1


class DecodeError(Exception):
    """A message could not be decoded. The sender is faulty or hostile."""


class MessageTooLarge(DecodeError):
    pass


class UnknownVersion(DecodeError):
    pass


class UnknownMessageType(DecodeError):
    pass


class MalformedMessage(DecodeError):
    pass


class Message:
    """Base of all wire messages. Subclasses are frozen dataclasses."""

    TYPE: ClassVar[str]

    def to_fields(self) -> list[Any]:
        raise NotImplementedError

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        raise NotImplementedError

    @property
    def protocol(self) -> str:
        return self.TYPE.split(".", 1)[0]


class Codec:
    def __init__(self, types: Iterable[type[Message]] = ()) -> None:
        self._types: dict[str, type[Message]] = {}
        for t in types:
            self.register(t)

    def register(self, cls: type[Message]) -> None:
        if cls.TYPE in self._types and self._types[cls.TYPE] is not cls:
            raise ValueError(f"message type {cls.TYPE!r} registered twice")
        self._types[cls.TYPE] = cls

    def encode(self, msg: Message) -> bytes:
        data: bytes = msgpack.packb(
            [PROTOCOL_VERSION, msg.TYPE, msg.to_fields()], use_bin_type=True
        )
        if len(data) > MAX_MESSAGE_BYTES:
            raise MessageTooLarge(f"{msg.TYPE} encodes to {len(data)} bytes")
        return data

    def decode(self, data: bytes) -> Message:
        if len(data) > MAX_MESSAGE_BYTES:
            raise MessageTooLarge(
                f"message of {len(data)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}"
            )
        try:
            obj = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                max_bin_len=MAX_MESSAGE_BYTES,
                max_str_len=MAX_MESSAGE_BYTES,
                max_array_len=MAX_LIST_ITEMS * 8,
                max_map_len=MAX_LIST_ITEMS,
                max_ext_len=0,
            )
        except Exception as exc:  # msgpack raises a zoo of types on garbage
            raise MalformedMessage(f"not valid msgpack: {exc.__class__.__name__}: {exc}") from exc
        if not isinstance(obj, list) or len(obj) != 3:
            raise MalformedMessage("envelope must be [version, type, fields]")
        version, tag, fields = obj
        if version != PROTOCOL_VERSION:
            raise UnknownVersion(
                f"protocol version {version!r} is not supported (this node speaks "
                f"{PROTOCOL_VERSION})"
            )
        if not isinstance(tag, str):
            raise MalformedMessage("message type must be a string")
        cls = self._types.get(tag)
        if cls is None:
            raise UnknownMessageType(f"unknown message type {tag[:64]!r}")
        if not isinstance(fields, list):
            raise MalformedMessage(f"{tag}: fields must be a list")
        try:
            return cls.from_fields(fields)
        except DecodeError:
            raise
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise MalformedMessage(f"{tag}: {exc}") from exc
