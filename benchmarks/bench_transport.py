"""Throughput of shoal's transport against TCP and TLS 1.3 baselines, in one run.

    python benchmarks/bench_transport.py [--mib 1024] [--repeats 5] [--json]

A sender process and a receiver process talk over 127.0.0.1. Each transfer moves
``--mib`` MiB from a pre-touched source buffer into a pre-touched destination buffer
(every path receives into the same kind of big buffer, so memory traffic is equal)
and is timed by the sender from before connect until the receiver's final ack, so
connection setup and handshakes are included. Paths:

- raw_tcp        blocking sockets, sendall / recv_into, no crypto (the ceiling)
- tls_asyncio    asyncio streams with ssl (TLS 1.3, self-signed P-256 cert)
- tls_blocking   blocking ssl sockets (TLS 1.3), sendall / recv_into
- shoal_bulk     Transport.send_bulk -> bulk handler buffer (handshake + AES-256-GCM)
- shoal_messages Transport.send of ~1 MiB messages (min(--mib, 256) MiB moved)

Paths are interleaved per repeat (after one untimed warm-up each) so machine noise
hits them alike; the table reports medians. MB = 10^6 bytes. The first timed transfer
of each path is checked end to end with CRC-32.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing as mp
import os
import platform
import socket
import ssl
import statistics
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from shoal.identity.keys import Identity
from shoal.transport import Transport
from shoal.wire.codec import Codec, Message
from shoal.wire.contact import Contact
from shoal.wire.limits import BULK_CHUNK_BYTES, MAX_MESSAGE_BYTES

MiB = 1024 * 1024
CHUNK = BULK_CHUNK_BYTES
PATHS = ["raw_tcp", "tls_asyncio", "tls_blocking", "shoal_bulk", "shoal_messages"]
MESSAGE_PAYLOAD = MAX_MESSAGE_BYTES - 64  # leave room for the msgpack envelope
MESSAGE_MIB_CAP = 256
STEP_TIMEOUT_S = 600


@dataclass(frozen=True)
class Blob(Message):
    TYPE: ClassVar[str] = "bench.blob"
    data: bytes

    def to_fields(self) -> list[Any]:
        return [self.data]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Blob:
        return cls(fields[0])


CODEC = Codec([Blob])


def make_cert(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_ctx(certdir: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(certdir / "cert.pem", certdir / "key.pem")
    return ctx


def client_ctx(certdir: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(certdir / "cert.pem")
    return ctx


def touched(nbytes: int, fill: bytes = b"") -> bytearray:
    """A buffer whose pages are already faulted in (fill repeats ``fill``)."""
    if fill:
        reps = -(-nbytes // len(fill))
        return bytearray((fill * reps)[:nbytes])
    buf = bytearray(nbytes)
    for off in range(0, nbytes, 4096):
        buf[off] = 1
    return buf


# ------------------------------------------------------------------ receiver side


def listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    return s


def recv_all(sock: socket.socket | ssl.SSLSocket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got : got + CHUNK])
        if n == 0:
            raise EOFError(f"sender closed after {got} bytes")
        got += n


def serve_blocking(pipe: Pipe, view: memoryview, ctx: ssl.SSLContext | None) -> None:
    with listener() as lsock:
        pipe.send(("ready", lsock.getsockname()[1]))
        raw, _ = lsock.accept()
        sock: socket.socket | ssl.SSLSocket = (
            ctx.wrap_socket(raw, server_side=True) if ctx is not None else raw
        )
        with sock:
            recv_all(sock, view)
            sock.sendall(b"k")


async def serve_tls_asyncio(pipe: Pipe, view: memoryview, ctx: ssl.SSLContext) -> None:
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = 0
        while got < len(view):
            data = await reader.read(CHUNK)
            if not data:
                raise EOFError
            view[got : got + len(data)] = data
            got += len(data)
        writer.write(b"k")
        await writer.drain()
        writer.close()
        done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx, limit=CHUNK)
    pipe.send(("ready", server.sockets[0].getsockname()[1]))
    await done.wait()
    server.close()
    await server.wait_closed()


async def serve_shoal_bulk(pipe: Pipe, view: memoryview) -> None:
    done = asyncio.Event()
    transport = Transport(Identity.generate(), CODEC, on_message=lambda c, m: None)
    transport.set_bulk_handler(
        lambda sender, tag, size: view[:size] if size <= len(view) else None,
        lambda sender, tag, buf: done.set(),
    )
    contact = await transport.start("127.0.0.1", 0)
    pipe.send(("ready", str(contact)))
    await done.wait()
    await transport.aclose()


async def serve_shoal_messages(pipe: Pipe, view: memoryview) -> None:
    done = asyncio.Event()
    got = 0
    acks: set[asyncio.Task[None]] = set()

    def on_message(sender: Contact, msg: Message) -> None:
        nonlocal got
        assert isinstance(msg, Blob)
        view[got : got + len(msg.data)] = msg.data
        got += len(msg.data)
        if got >= len(view):
            task = asyncio.get_running_loop().create_task(transport.send(sender, Blob(b"k")))
            acks.add(task)
            task.add_done_callback(lambda t: done.set())

    transport = Transport(Identity.generate(), CODEC, on_message=on_message)
    contact = await transport.start("127.0.0.1", 0)
    pipe.send(("ready", str(contact)))
    await done.wait()
    await asyncio.gather(*acks)
    await transport.aclose()


def receiver_main(pipe: Pipe, nbytes: int, certdir: str) -> None:
    buf = touched(nbytes)
    view = memoryview(buf)
    cdir = Path(certdir)
    while True:
        cmd = pipe.recv()
        if cmd[0] == "stop":
            return
        _, path, size, expected_crc = cmd
        v = view[:size]
        if path == "raw_tcp":
            serve_blocking(pipe, v, None)
        elif path == "tls_blocking":
            serve_blocking(pipe, v, server_ctx(cdir))
        elif path == "tls_asyncio":
            asyncio.run(serve_tls_asyncio(pipe, v, server_ctx(cdir)))
        elif path == "shoal_bulk":
            asyncio.run(serve_shoal_bulk(pipe, v))
        elif path == "shoal_messages":
            asyncio.run(serve_shoal_messages(pipe, v))
        ok = expected_crc is None or zlib.crc32(v) == expected_crc
        pipe.send(("done", ok))


# -------------------------------------------------------------------- sender side


def send_blocking(view: memoryview, port: int, ctx: ssl.SSLContext | None) -> float:
    t0 = time.perf_counter()
    raw = socket.create_connection(("127.0.0.1", port))
    sock: socket.socket | ssl.SSLSocket = (
        ctx.wrap_socket(raw, server_hostname="localhost") if ctx is not None else raw
    )
    with sock:
        for off in range(0, len(view), CHUNK):
            sock.sendall(view[off : off + CHUNK])
        if sock.recv(1) != b"k":
            raise RuntimeError("no ack")
    return time.perf_counter() - t0


async def send_tls_asyncio(view: memoryview, port: int, ctx: ssl.SSLContext) -> float:
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    for off in range(0, len(view), CHUNK):
        writer.write(view[off : off + CHUNK])
        await writer.drain()
    if await reader.read(1) != b"k":
        raise RuntimeError("no ack")
    elapsed = time.perf_counter() - t0
    writer.close()
    return elapsed


async def send_shoal_bulk(view: memoryview, target: str) -> float:
    transport = Transport(Identity.generate(), CODEC, on_message=lambda c, m: None)
    t0 = time.perf_counter()
    await transport.send_bulk(Contact.parse(target), "bench", [view])
    elapsed = time.perf_counter() - t0
    await transport.aclose()
    return elapsed


async def send_shoal_messages(view: memoryview, target: str) -> float:
    acked = asyncio.Event()
    transport = Transport(Identity.generate(), CODEC, on_message=lambda c, m: acked.set())
    to = Contact.parse(target)
    t0 = time.perf_counter()
    for off in range(0, len(view), MESSAGE_PAYLOAD):
        await transport.send(to, Blob(bytes(view[off : off + MESSAGE_PAYLOAD])))
    await acked.wait()
    elapsed = time.perf_counter() - t0
    await transport.aclose()
    return elapsed


def sender_main(pipe: Pipe, nbytes: int, certdir: str) -> None:
    src = touched(nbytes, fill=os.urandom(MiB + 13))
    view = memoryview(src)
    cdir = Path(certdir)
    while True:
        cmd = pipe.recv()
        if cmd[0] == "stop":
            return
        if cmd[0] == "crc":
            pipe.send(("crc", zlib.crc32(view[: cmd[1]])))
            continue
        _, path, size, target = cmd
        v = view[:size]
        if path == "raw_tcp":
            t = send_blocking(v, target, None)
        elif path == "tls_blocking":
            t = send_blocking(v, target, client_ctx(cdir))
        elif path == "tls_asyncio":
            t = asyncio.run(send_tls_asyncio(v, target, client_ctx(cdir)))
        elif path == "shoal_bulk":
            t = asyncio.run(send_shoal_bulk(v, target))
        else:
            t = asyncio.run(send_shoal_messages(v, target))
        pipe.send(("elapsed", t))


# ----------------------------------------------------------------------- driver


def expect(pipe: Pipe, kind: str) -> Any:
    if not pipe.poll(STEP_TIMEOUT_S):
        raise TimeoutError(f"worker did not answer {kind!r} in {STEP_TIMEOUT_S} s")
    msg = pipe.recv()
    if msg[0] != kind:
        raise RuntimeError(f"expected {kind!r}, got {msg!r}")
    return msg[1]


def size_for(path: str, nbytes: int) -> int:
    if path == "shoal_messages":
        return min(nbytes, MESSAGE_MIB_CAP * MiB)
    return nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=1024, help="MiB per transfer")
    ap.add_argument("--repeats", type=int, default=5, help="timed transfers per path")
    ap.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset")
    ap.add_argument("--json", action="store_true", help="also print the JSON result")
    args = ap.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    unknown = set(paths) - set(PATHS)
    if unknown:
        ap.error(f"unknown paths: {sorted(unknown)}")
    nbytes = args.mib * MiB

    ctx = mp.get_context("spawn")
    samples: dict[str, list[float]] = {p: [] for p in paths}
    verified: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as certdir:
        make_cert(Path(certdir))
        r_pipe, r_child = ctx.Pipe()
        s_pipe, s_child = ctx.Pipe()
        receiver = ctx.Process(target=receiver_main, args=(r_child, nbytes, certdir))
        sender = ctx.Process(target=sender_main, args=(s_child, nbytes, certdir))
        receiver.start()
        sender.start()
        try:
            for rep in range(-1, args.repeats):  # rep -1 is the untimed warm-up
                for path in paths:
                    size = size_for(path, nbytes)
                    check = rep == 0
                    crc = None
                    if check:
                        s_pipe.send(("crc", size))
                        crc = expect(s_pipe, "crc")
                    r_pipe.send(("serve", path, size, crc))
                    target = expect(r_pipe, "ready")
                    s_pipe.send(("send", path, size, target))
                    elapsed = expect(s_pipe, "elapsed")
                    ok = expect(r_pipe, "done")
                    if check:
                        verified[path] = bool(ok)
                    if rep >= 0:
                        samples[path].append(size / elapsed / 1e6)
                        print(
                            f"  {path:15s} run {rep + 1}: {size / elapsed / 1e6:8.1f} MB/s",
                            file=sys.stderr,
                        )
        finally:
            for pipe in (r_pipe, s_pipe):
                pipe.send(("stop",))
            receiver.join(10)
            sender.join(10)

    report(args, paths, samples, verified, nbytes)


def report(
    args: argparse.Namespace,
    paths: list[str],
    samples: dict[str, list[float]],
    verified: dict[str, bool],
    nbytes: int,
) -> None:
    medians = {p: statistics.median(v) for p, v in samples.items() if v}
    ratio = None
    if "shoal_bulk" in medians and "tls_blocking" in medians:
        ratio = medians["shoal_bulk"] / medians["tls_blocking"]
    result = {
        "benchmark": "bench_transport",
        "mib": args.mib,
        "repeats": args.repeats,
        "unit": "MB/s (10^6 bytes per second), median",
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "openssl": ssl.OPENSSL_VERSION,
        },
        "median_mb_s": {p: round(m, 1) for p, m in medians.items()},
        "samples_mb_s": {p: [round(x, 1) for x in v] for p, v in samples.items()},
        "bytes_per_transfer": {p: size_for(p, nbytes) for p in paths},
        "verified": verified,
        "shoal_bulk_over_tls_blocking": None if ratio is None else round(ratio, 3),
    }
    print()
    print("| path | median MB/s | min | max | MiB/transfer | runs | verified |")
    print("|---|---:|---:|---:|---:|---:|:---:|")
    for p in paths:
        v = samples[p]
        print(
            f"| {p} | {medians[p]:.0f} | {min(v):.0f} | {max(v):.0f} | "
            f"{size_for(p, nbytes) // MiB} | {len(v)} | {'yes' if verified.get(p) else 'NO'} |"
        )
    if ratio is not None:
        print(f"\nshoal_bulk / tls_blocking = {ratio:.2f} (target >= 0.80)")
    if args.json:
        print()
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
