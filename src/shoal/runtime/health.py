"""``/healthz``, ``/readyz`` and ``/metrics`` for orchestrators (Docker, Kubernetes).

- ``/healthz``: 200 while the node's event loop runs (the answer itself comes from
  that loop, so a wedged loop fails the probe), 503 once the node is stopping.
- ``/readyz``: 200 only once the node has joined the swarm and synced: for a plain
  node, it sees a live peer (or is the seed, with no bootstrap); for a training node,
  it has also downloaded and hash-checked the run's current state. 503 with the stage
  (``joining``, ``syncing``, ...) before that.
- ``/metrics``: Prometheus text (peers, bytes, round, epsilon spent when DP is on),
  on the same port, so a
  NetworkPolicy needs only the P2P port and this one.

The server runs on the node's loop; ``Readiness`` may be updated from any thread
(the training loop), since each update swaps one tuple.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.runtime.background import NodeThread
from shoal.runtime.http import HttpServer, Request, Response
from shoal.runtime.node import Node
from shoal.wire.contact import split_addr

log = logging.getLogger(__name__)

HEALTH_FILE = "health.json"
# How often a plain node re-checks that it still has a live peer.
WATCH_INTERVAL_S = 0.5


class Readiness:
    """The stage a node is in and whether it should receive traffic."""

    def __init__(self, stage: str = "starting") -> None:
        self._state: tuple[bool, str, dict[str, Any]] = (False, stage, {})

    def set(self, ready: bool, stage: str, **detail: Any) -> None:
        self._state = (ready, stage, dict(detail))

    @property
    def ready(self) -> bool:
        return self._state[0]

    @property
    def stage(self) -> str:
        return self._state[1]

    def snapshot(self) -> tuple[bool, str, dict[str, Any]]:
        return self._state


class HealthServer:
    def __init__(self, node: Node, readiness: Readiness) -> None:
        self.node = node
        self.readiness = readiness
        self.started = time.monotonic()
        self.stopping = False
        self.http = HttpServer(
            {"/healthz": self._healthz, "/readyz": self._readyz, "/metrics": self._metrics}
        )

    async def start(self, listen: str) -> str:
        """Listen on ``HOST:PORT`` (port 0 picks one); record it in the data dir."""
        host, port = split_addr(listen)
        bound_host, bound_port = await self.http.start(host, port)
        addr = f"{bound_host}:{bound_port}"
        path = self.node.config.data_dir / HEALTH_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"addr": addr}))
        tmp.replace(path)
        log.info("health endpoints on http://%s/healthz, /readyz, /metrics", addr)
        return addr

    def close_in(self, thread: NodeThread) -> None:
        """Stop serving from another thread; a node loop that already died is fine."""
        try:
            thread.call(self.aclose(), timeout=5.0)
        except (RuntimeError, TimeoutError) as exc:
            log.debug("health server not closed cleanly: %s", exc)

    async def aclose(self) -> None:
        self.stopping = True
        await self.http.aclose()
        (self.node.config.data_dir / HEALTH_FILE).unlink(missing_ok=True)

    def _alive_peers(self) -> int:
        if self.node.core is None:
            return 0
        return sum(p["state"] == "alive" for p in self.node.peers())

    async def _healthz(self, req: Request) -> Response:
        if self.stopping or self.node.core is None:
            return Response.json(503, {"status": "stopping"})
        return Response.json(
            200,
            {
                "status": "alive",
                "peer_id": str(self.node.peer_id),
                "uptime_s": round(time.monotonic() - self.started, 1),
            },
        )

    async def _readyz(self, req: Request) -> Response:
        ready, stage, detail = self.readiness.snapshot()
        body = {"ready": ready, "stage": stage, "peers_alive": self._alive_peers(), **detail}
        return Response.json(200 if ready and not self.stopping else 503, body)

    async def _metrics(self, req: Request) -> Response:
        ready, _, detail = self.readiness.snapshot()
        t = self.node.transport
        lines = [
            "# TYPE shoal_up gauge",
            "shoal_up 1",
            "# TYPE shoal_ready gauge",
            f"shoal_ready {int(ready)}",
            "# TYPE shoal_peers_alive gauge",
            f"shoal_peers_alive {self._alive_peers()}",
            "# TYPE shoal_bytes_sent_total counter",
            f"shoal_bytes_sent_total {t.bytes_sent}",
            "# TYPE shoal_bytes_received_total counter",
            f"shoal_bytes_received_total {t.bytes_received}",
        ]
        if isinstance(detail.get("round"), int):
            lines += ["# TYPE shoal_round gauge", f"shoal_round {detail['round']}"]
        for key in ("dp_epsilon", "dp_delta", "dp_sgd_epsilon"):  # DP on ([privacy])
            if isinstance(detail.get(key), float):
                lines += [f"# TYPE shoal_{key} gauge", f"shoal_{key} {detail[key]!r}"]
        return Response(200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")


async def watch_membership(
    node: Node, readiness: Readiness, seed: bool, gate: Callable[[], str | None] | None = None
) -> None:
    """Keep a plain node's readiness current: ready while it has a live peer.

    A seed (no bootstrap) is ready alone: it is what the others join. ``gate`` names
    a stage that still blocks readiness (e.g. no verified model to serve yet), or None;
    once the gate is open (a model is being served) the node stays ready alone, so an
    inference node keeps serving after the trainers have gone.
    """
    served = False
    while True:
        alive = sum(p["state"] == "alive" for p in node.peers()) if node.core else 0
        blocked = gate() if gate is not None else None
        served = served or (gate is not None and blocked is None)
        if not (alive or seed or served):
            readiness.set(False, "joining")
        elif blocked is not None:
            readiness.set(False, blocked)
        else:
            readiness.set(True, "joined")
        await asyncio.sleep(WATCH_INTERVAL_S)


def read_health_addr(data_dir: Path) -> str | None:
    """The ``HOST:PORT`` a node in ``data_dir`` serves its probes on, if it is up."""
    try:
        return str(json.loads((data_dir / HEALTH_FILE).read_text())["addr"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def start_in_thread(thread: NodeThread, readiness: Readiness, listen: str) -> HealthServer:
    """Serve the probes on a NodeThread's loop (for ``shoal train``)."""
    assert thread.node is not None
    server = HealthServer(thread.node, readiness)
    thread.call(server.start(listen))
    return server
