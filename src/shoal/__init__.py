"""shoal: decentralized training across independent Linux nodes with no central server."""

__version__ = "0.1.0"
