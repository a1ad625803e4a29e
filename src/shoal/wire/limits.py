"""Hard limits on untrusted input. Every peer is untrusted, so every size it can
choose is capped here, with the reason next to the number."""

# A frame carries at most one bulk chunk plus its AEAD tag and header. 4 MiB keeps a
# single allocation per frame small next to a node's memory while leaving room for
# 1 MiB chunks with plenty of slack.
MAX_FRAME_BYTES = 4 * 1024 * 1024

# Control messages (DHT, membership) are small; the largest is a FIND_NODE reply of
# k=20 contacts or a DHT record. 1 MiB is ~100x what they need, and a peer that sends
# more is broken or hostile.
MAX_MESSAGE_BYTES = 1024 * 1024

# Bytes a connection may hold decoded-but-unconsumed or queued-to-send. Beyond this we
# stop reading (back-pressure) or drop the peer, so one slow or hostile peer cannot
# make the node buffer without bound.
MAX_PENDING_BYTES_PER_CONNECTION = 16 * 1024 * 1024

# Bulk tensors move in chunks of this size: large enough that per-chunk overhead
# (syscall, AEAD call, frame header) is <1% of the cost, small enough that a stream
# never needs a whole-tensor buffer on either side.
BULK_CHUNK_BYTES = 1024 * 1024

# Largest single bulk stream we accept (a full model state for the demo-sized models
# is ~10-100 MiB; 8 GiB covers real models and stops absurd announcements).
MAX_STREAM_BYTES = 8 * 1024 * 1024 * 1024

# Connections per node: each costs a socket, two AEAD states and buffers. 512 covers a
# k-bucket table plus SWIM and averaging peers for a 10k-node swarm.
MAX_CONNECTIONS = 512

# Handshake must finish quickly or the half-open connection is dropped, so idle
# attackers cannot pin sockets.
HANDSHAKE_TIMEOUT_S = 10.0

# Strings in messages (addresses, record kinds) are short; cap them to stop padding.
MAX_STRING_BYTES = 256

# A list in a message (contacts, gossip entries) holds at most this many items.
MAX_LIST_ITEMS = 256

# DHT record value size: records are pointers (addresses, hashes, small metadata).
MAX_RECORD_VALUE_BYTES = 64 * 1024
