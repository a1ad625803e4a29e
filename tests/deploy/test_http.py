"""The probe server's HTTP parsing and limits: bad requests get a 4xx, never a hang."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.runtime import http
from shoal.runtime.http import HttpError, HttpServer, Request, Response, parse_head


def test_parse_head_reads_method_path_and_headers() -> None:
    req = parse_head(b"GET /readyz?verbose=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0")
    assert (req.method, req.path) == ("GET", "/readyz")
    assert req.headers == {"host": "x", "content-length": "0"}


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /readyz", 400),  # no version
        (b"GET  /readyz HTTP/1.1", 400),  # empty target
        (b"GET readyz HTTP/1.1", 400),  # not origin-form
        (b"GET /a\x00b HTTP/1.1", 400),
        (b"GET /readyz HTTP/2.0", 400),
        (b"get /readyz HTTP/1.1", 400),
        (b"GET /readyz HTTP/1.1\r\nno-colon-here", 400),
        (b"GET /readyz HTTP/1.1\r\nBad Name: x", 400),
        (b"GET /readyz HTTP/1.1\r\n : x", 400),
        (b"GET /" + b"a" * http.MAX_HEAD_BYTES + b" HTTP/1.1", 431),
    ],
)
def test_parse_head_rejects(head: bytes, status: int) -> None:
    with pytest.raises(HttpError) as info:
        parse_head(head)
    assert info.value.status == status


@pytest.mark.parametrize("value", ["-1", "1e3", "abc", "9" * 12, ""])
def test_bad_content_length(value: str) -> None:
    req = parse_head(f"POST /p HTTP/1.1\r\nContent-Length: {value}".encode())
    with pytest.raises(HttpError) as info:
        _ = req.content_length
    assert info.value.status == 400


@given(st.binary(max_size=512))
def test_parse_head_never_fails_otherwise(data: bytes) -> None:
    try:
        req = parse_head(data)
    except HttpError as exc:
        assert 400 <= exc.status < 500
    else:
        assert req.path.startswith("/")


# -- the real server on loopback -----------------------------------------------------


async def _ok(req: Request) -> Response:
    return Response.json(200, {"method": req.method, "body": req.body.decode()})


async def _boom(req: Request) -> Response:
    raise RuntimeError("handler bug")


Scenario = Callable[[tuple[str, int]], Coroutine[Any, Any, None]]


def with_server(scenario: Scenario) -> None:
    async def main() -> None:
        srv = HttpServer({"/ok": _ok, "/boom": _boom})
        addr = await srv.start("127.0.0.1", 0)
        try:
            await scenario(addr)
        finally:
            await srv.aclose()

    asyncio.run(main())


async def _exchange(addr: tuple[str, int], data: bytes, close_write: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(data)
    if close_write:
        writer.write_eof()
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return reply


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"GET /nope HTTP/1.1\r\n\r\n", 404),
        (b"DELETE /ok HTTP/1.1\r\n\r\n", 405),
        (b"POST /ok HTTP/1.1\r\n\r\n", 411),
        (b"POST /ok HTTP/1.1\r\nContent-Length: 999999\r\n\r\n", 413),
        (b"GET /boom HTTP/1.1\r\n\r\n", 500),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # TLS hello
        (b"GET /ok HTTP/1.1\r\nX: " + b"y" * (2 * http.MAX_HEAD_BYTES) + b"\r\n\r\n", 431),
    ],
)
def test_server_answers(request_bytes: bytes, status: int) -> None:
    async def scenario(addr: tuple[str, int]) -> None:
        assert _status(await _exchange(addr, request_bytes)) == status

    with_server(scenario)


def test_post_body_and_head_method() -> None:
    async def scenario(addr: tuple[str, int]) -> None:
        reply = await _exchange(addr, b"POST /ok HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        assert _status(reply) == 200 and b'"body": "hello"' in reply
        head = await _exchange(addr, b"HEAD /ok HTTP/1.1\r\n\r\n")
        assert _status(head) == 200 and head.endswith(b"\r\n\r\n")  # no body

    with_server(scenario)


def test_truncated_requests_get_400() -> None:
    async def scenario(addr: tuple[str, int]) -> None:
        cut_head = await _exchange(addr, b"GET /ok HTTP/1.1\r\n", close_write=True)
        assert _status(cut_head) == 400
        short = b"POST /ok HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"
        assert _status(await _exchange(addr, short, close_write=True)) == 400

    with_server(scenario)


def test_slow_client_is_dropped_and_others_still_served(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "REQUEST_TIMEOUT_S", 0.5)

    async def scenario(addr: tuple[str, int]) -> None:
        # A slowloris holds its connection open with a partial head...
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(b"GET /ok HTTP/1.1\r\nX-Slow: ")
        await writer.drain()
        # ...and a probe meanwhile still gets its answer.
        assert _status(await _exchange(addr, b"GET /ok HTTP/1.1\r\n\r\n")) == 200
        reply = await asyncio.wait_for(reader.read(), 5)
        assert _status(reply) == 408
        writer.close()

    with_server(scenario)
