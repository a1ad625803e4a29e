"""A tiny HTTP/1.1 server for probes, metrics and edge inference.

Not a web framework: one request per connection (``Connection: close``), GET and
POST only, small bounded heads and bodies. The request parser is sans-IO
(``parse_head``) so it can be fuzzed without sockets; the asyncio part only reads
bytes under a deadline and writes one response.

Probes come from kubelets and load balancers we do not control, so everything a
client sends is bounded and a bad request gets a 4xx, never a crash or a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# A probe's request head is ~100 bytes; 8 KiB is what common servers accept and stops
# a client from growing our buffer without bound.
MAX_HEAD_BYTES = 8 * 1024
# Bodies only carry inference prompts (a few KiB of text).
MAX_BODY_BYTES = 64 * 1024
# A client that has not sent its whole request by then is dropped (slowloris).
REQUEST_TIMEOUT_S = 5.0
# Concurrent connections served; probes need 1-2, more is a flood and waits.
MAX_CONNECTIONS = 32
METHODS = frozenset({"GET", "HEAD", "POST"})

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    422: "Unprocessable Content",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def content_length(self) -> int:
        raw = self.headers.get("content-length")
        if raw is None:
            return 0
        if not raw.isdigit() or len(raw) > 9:
            raise HttpError(400, f"bad Content-Length {raw!r}")
        return int(raw)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, obj: object) -> Response:
        return cls(status, json.dumps(obj).encode() + b"\n", "application/json")

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode())

    def encode(self, head_only: bool = False) -> bytes:
        reason = REASONS.get(self.status, "Unknown")
        lines = [
            f"HTTP/1.1 {self.status} {reason}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            "Cache-Control: no-store",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


def parse_head(data: bytes) -> Request:
    """Parse a request head (everything before the blank line, without it)."""
    if len(data) > MAX_HEAD_BYTES:
        raise HttpError(431, "request head too large")
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise HttpError(400, str(exc)) from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise HttpError(400, f"unsupported version {version[:16]!r}")
    if not method.isalpha() or not method.isupper():
        raise HttpError(400, "malformed method")
    if not target.startswith("/") or any(c <= " " or c == "\x7f" for c in target):
        raise HttpError(400, "malformed target")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise HttpError(400, "malformed header line")
        headers[name.lower()] = value.strip()
    path = target.split("?", 1)[0]
    return Request(method, path, headers)


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    """Serve ``routes`` (path -> handler) on the running event loop."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = dict(routes)
        self._server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        # limit: readuntil() gives up (431) once a head outgrows MAX_HEAD_BYTES
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD_BYTES + 4)
        sock = self._server.sockets[0].getsockname()
        self.address = (str(sock[0]), int(sock[1]))
        return self.address

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._slots:
            head_only = False
            try:
                req = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT_S)
                head_only = req.method == "HEAD"
                resp = await self._dispatch(req)
            except HttpError as exc:
                resp = Response.text(exc.status, f"{exc}\n")
            except TimeoutError:
                resp = Response.text(408, "request timeout\n")
            except Exception:
                log.exception("http handler failed")
                resp = Response.text(500, "internal error\n")
            try:
                writer.write(resp.encode(head_only))
                await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S)
            except (OSError, TimeoutError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(writer.wait_closed(), REQUEST_TIMEOUT_S)

    async def _dispatch(self, req: Request) -> Response:
        handler = self.routes.get(req.path)
        if handler is None:
            return Response.text(404, "not found\n")
        if req.method not in METHODS:
            return Response.text(405, "method not allowed\n")
        return await handler(req)


async def _read_request(reader: asyncio.StreamReader) -> Request:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request head too large") from None
    except asyncio.IncompleteReadError:
        raise HttpError(400, "connection closed before the request head ended") from None
    req = parse_head(raw[:-4])
    length = req.content_length
    if length > MAX_BODY_BYTES:
        raise HttpError(413, f"body over {MAX_BODY_BYTES} bytes")
    if req.method == "POST" and "content-length" not in req.headers:
        raise HttpError(411, "POST needs Content-Length")
    if length == 0:
        return req
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise HttpError(400, "body shorter than Content-Length") from None
    return Request(req.method, req.path, req.headers, body)
