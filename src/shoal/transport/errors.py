"""Every way the transport can fail, as one exception tree rooted at TransportError.

Callers catch TransportError for "this peer could not be reached or misbehaved";
the subclasses say which. Errors caused by the *caller* (a tag that is too long, a
non-contiguous buffer, a message over the codec limit) stay ValueError / DecodeError.
"""

from __future__ import annotations


class TransportError(Exception):
    """Base of all transport failures."""


class TransportClosed(TransportError):
    """The Transport was closed (aclose) or not started."""


class PeerUnreachable(TransportError):
    """No TCP connection could be made, or the connection broke while sending."""


class TooManyConnections(TransportError):
    """max_connections is reached and no idle connection can be evicted."""


class HandshakeError(TransportError):
    """The peer failed the authenticated handshake: bad magic, bad signature,
    undecryptable handshake message, malformed field, or a timeout."""


class HandshakeAbandoned(HandshakeError):
    """The peer closed the connection between handshake messages: what a dial cancelled
    part-way (or a port probe) looks like, so it is not reported as misbehaviour. A
    close in the middle of a message stays a plain HandshakeError (a truncated frame)."""


class UnsupportedVersion(HandshakeError):
    """The peer speaks a handshake version this node does not."""


class PeerIdMismatch(HandshakeError):
    """The key at the dialled address belongs to a different PeerId than expected."""


class ChannelError(TransportError):
    """A record could not be opened (bad tag, short record) or a key is used up.

    The channel is dead after this; the connection must close.
    """


class BadRecord(ChannelError):
    """A record failed AEAD authentication or is malformed."""


class KeyExhausted(ChannelError):
    """A direction's key reached its record or byte limit; reconnect for fresh keys."""


class ProtocolViolation(TransportError):
    """An authenticated peer sent a record that is not allowed at this point."""


class BulkRejected(TransportError):
    """The receiver refused a bulk stream (no handler, too big, handler said no)."""


class BulkStreamError(TransportError):
    """A bulk stream broke off: the sender sent more or fewer bytes than announced,
    stopped mid-stream, stalled, or the stream was aborted locally."""
