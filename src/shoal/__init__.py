"""shoal: decentralized training across independent Linux nodes with no central server."""

__version__ = "0.1.0"

from typing import Any


def __getattr__(name: str) -> Any:
    # torch is heavy: import the training API only when it is asked for, so the CLI's
    # P2P commands start fast.
    if name in ("DiLoCo", "start_node"):
        from shoal import diloco

        return getattr(diloco, name)
    if name == "DpSettings":
        from shoal.privacy.settings import DpSettings

        return DpSettings
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")
