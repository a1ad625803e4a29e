"""A TCP relay for the chaos suite's dev chain: ``shoal chain`` serves loopback only,
so inside the testnet's switch namespace this forwards ``LISTEN`` (the bridge's
address, which every host reaches) to the chain's loopback port in that namespace.

Run: ``python rpc_relay.py 10.231.0.254:8545 127.0.0.1:PORT`` (prints ``ready``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

# JSON-RPC clients of 8 trainers and the harness; more than this is not our traffic.
MAX_CONNECTIONS = 128
# A connection idle this long is dropped (the chain answers within RPC_TIMEOUT_S = 30 s).
IDLE_TIMEOUT_S = 120.0
CHUNK = 64 * 1024


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await asyncio.wait_for(src.read(CHUNK), IDLE_TIMEOUT_S)
            if not data:
                break
            dst.write(data)
            await dst.drain()
    except (OSError, TimeoutError):
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.close()


async def main(listen: str, target: str) -> None:
    lhost, lport = listen.rsplit(":", 1)
    thost, tport = target.rsplit(":", 1)
    slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if slots.locked():
            w.close()
            return
        async with slots:
            try:
                ur, uw = await asyncio.open_connection(thost, int(tport))
            except OSError:
                w.close()
                return
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_pipe(r, uw))
                tg.create_task(_pipe(ur, w))

    server = await asyncio.start_server(handle, lhost, int(lport))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1], sys.argv[2]))
