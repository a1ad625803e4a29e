"""The node's local control socket: one JSON request per line, one JSON reply.

It is a Unix socket inside the data directory (mode 0600), so only the node's own
user can drive it; the CLI's ``shoal peers`` and the tests talk to it.

Requests: ``{"cmd": "status"}``, ``{"cmd": "peers"}``,
``{"cmd": "put", "key": NAME, "value": TEXT}``, ``{"cmd": "get", "key": NAME}``.
Replies carry ``"ok": true`` plus data, or ``"ok": false, "error": MESSAGE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.dht.records import key_for

if TYPE_CHECKING:
    from shoal.runtime.node import Node

log = logging.getLogger(__name__)

# A control request is a short JSON object; a longer line is a bug or abuse.
MAX_REQUEST_BYTES = 64 * 1024
# DHT values put through the control socket are small pointers, like records.
MAX_VALUE_CHARS = 16 * 1024


class ControlServer:
    def __init__(self, node: Node, path: Path) -> None:
        self.node = node
        self.path = path
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a killed node
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_REQUEST_BYTES
        )
        os.chmod(self.path, 0o600)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("request must be a JSON object")
                reply = await self._handle(req)
            except (ValueError, KeyError, TypeError) as exc:
                reply = {"ok": False, "error": str(exc)}
            except TimeoutError:
                reply = {"ok": False, "error": "timed out"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            log.debug("control client error: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        node = self.node
        if cmd == "status":
            assert node.contact is not None and node.core is not None
            return {
                "ok": True,
                "peer_id": str(node.peer_id),
                "addr": node.contact.addr,
                "routing_table": len(node.core.dht.contacts()),
                "records": node.core.dht.record_count,
                "pid": os.getpid(),
            }
        if cmd == "peers":
            return {"ok": True, "peers": node.peers()}
        if cmd == "put":
            value = str(req["value"])
            if len(value) > MAX_VALUE_CHARS:
                raise ValueError(f"value longer than {MAX_VALUE_CHARS} characters")
            stored = await node.put(key_for(str(req["key"])), value.encode())
            return {"ok": True, "stored": stored}
        if cmd == "get":
            records = await node.get(key_for(str(req["key"])))
            return {
                "ok": True,
                "values": [
                    {"publisher": str(r.publisher), "value": r.value.decode(errors="replace")}
                    for r in records
                ],
            }
        raise ValueError(f"unknown command {cmd!r}")


def request(data_dir: Path, req: dict[str, Any], timeout: float = 70.0) -> dict[str, Any]:
    """Blocking client: send one request to the node running on ``data_dir``."""
    path = Path(data_dir) / "control.sock"
    if not path.exists():
        raise ConnectionError(f"no node is running on {data_dir} (no {path})")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    return reply
