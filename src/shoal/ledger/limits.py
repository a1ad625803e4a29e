"""Limits on untrusted ledger input, each with its reason."""

# A payload is a small record (hashes, counts, a contributor list). A round aggregate
# lists up to MAX_CONTRIBUTORS (author, seq, hash) triples of ~80 bytes: 256 * 80 is
# ~20 KiB, so 64 KiB leaves room and stops a peer from bloating everyone's feeds.
MAX_PAYLOAD_BYTES = 64 * 1024

# Contributors one round-aggregate entry (and one on-chain anchor) may list; the
# contract has the same bound (MAX_PEERS_PER_ROUND) to cap one transaction's gas.
MAX_CONTRIBUTORS = 256

# An encoded entry is its fields plus the payload; anything bigger is hostile.
MAX_ENTRY_BYTES = MAX_PAYLOAD_BYTES + 512

# Entries per replication reply: keeps one reply under wire.limits.MAX_MESSAGE_BYTES
# (1 MiB) even when every entry carries a maximal payload... 15 * 64.5 KiB < 1 MiB.
MAX_ENTRIES_PER_REPLY = 15

# Feeds one HAVE message may advertise (one per peer we replicate); bounded like any list.
MAX_FEEDS_PER_HAVE = 256

# Run names and free text in payloads.
MAX_TEXT_BYTES = 256

# Attestation evidence (a TEE report is a few KiB).
MAX_EVIDENCE_BYTES = 32 * 1024

# A feed sequence number is a u64 on the wire and in the on-chain header.
MAX_SEQ = 2**64 - 1
