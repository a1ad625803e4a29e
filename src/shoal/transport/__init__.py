"""Authenticated, encrypted transport: handshake, AEAD records, connections, bulk streams.

Layering inside this package: ``handshake`` and ``channel`` are sans-IO (bytes in,
bytes out); ``connection`` and ``bulk`` put them on sockets; ``transport`` owns the
listener, the connection table and the task/thread bookkeeping.
"""

from shoal.transport.bulk import BulkAccept, BulkComplete, BulkFailed
from shoal.transport.channel import RecordOpener, RecordSealer, RecordType
from shoal.transport.errors import (
    BadRecord,
    BulkRejected,
    BulkStreamError,
    ChannelError,
    HandshakeAbandoned,
    HandshakeError,
    KeyExhausted,
    PeerIdMismatch,
    PeerUnreachable,
    ProtocolViolation,
    TooManyConnections,
    TransportClosed,
    TransportError,
    UnsupportedVersion,
)
from shoal.transport.handshake import HandshakeResult, Initiator, Responder
from shoal.transport.transport import Transport

__all__ = [
    "BadRecord",
    "BulkAccept",
    "BulkComplete",
    "BulkFailed",
    "BulkRejected",
    "BulkStreamError",
    "ChannelError",
    "HandshakeAbandoned",
    "HandshakeError",
    "HandshakeResult",
    "Initiator",
    "KeyExhausted",
    "PeerIdMismatch",
    "PeerUnreachable",
    "ProtocolViolation",
    "RecordOpener",
    "RecordSealer",
    "RecordType",
    "Responder",
    "TooManyConnections",
    "Transport",
    "TransportClosed",
    "TransportError",
    "UnsupportedVersion",
]
