"""A peer's protocol cores composed into one sans-IO state machine."""
