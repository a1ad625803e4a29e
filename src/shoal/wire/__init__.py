"""Wire format: limits, length-prefixed frames, and versioned msgpack messages."""
