"""Node identity: Ed25519 keys, peer ids and signatures."""

from shoal.identity.keys import Identity, KeyFileError, PeerId, verify

__all__ = ["Identity", "KeyFileError", "PeerId", "verify"]
