"""What ``shoal node start`` and ``shoal train`` add for deployments.

- ``--health-listen HOST:PORT``: ``/healthz``, ``/readyz``, ``/metrics``;
- ``--profile edge``: memory cap, small batches, one thread;
- ``--serve-model DIR`` and/or ``--follow-run RUN`` (inference only): serve the newest
  verified checkpoint in DIR, or the run's current hash-checked state, at
  ``POST /predict`` on ``--serve-listen``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from shoal.runtime.edge import EdgeProfile, ProfileError, address_space_bytes, apply_edge
from shoal.runtime.health import HealthServer, Readiness, watch_membership
from shoal.runtime.http import HttpServer
from shoal.runtime.node import Node

if TYPE_CHECKING:
    from shoal.training.run_config import RunConfig

PROFILES = ("default", "edge")
DEFAULT_FACTORY = "shoal.training.model:tiny_gpt"
# Address space a node needs beyond torch's own mappings (model, batches, threads).
MIN_HEADROOM_BYTES = 192 * 2**20
# Kept allocated while training under the edge cap, freed to report running out.
REPORT_RESERVE_BYTES = 16 * 2**20
SERVE_FILE = "serve.json"  # where the inference server's bound HOST:PORT is recorded


def override_run_config(cfg: RunConfig, *, listen: str | None, rank: int | None) -> None:
    """Per-container values on top of one shared run config (ConfigMap, compose)."""
    from shoal.training.run_config import ConfigError
    from shoal.wire.contact import split_addr

    if listen is not None:
        try:
            split_addr(listen)
        except ValueError as exc:
            raise ConfigError(f"--listen: {exc}") from None
        cfg.listen = listen
    if rank is not None:
        if not 0 <= rank < cfg.world:
            raise ConfigError(f"--rank {rank} is not in [0, data.world={cfg.world})")
        cfg.rank = rank


def edge_run_config(cfg: RunConfig, profile: EdgeProfile) -> None:
    """Small batches and one thread for ``shoal train --profile edge``.

    The round's sample target is pinned first: it defaults to peers * steps * batch,
    and the swarm's other peers compute it with their (larger) batch size.
    """
    import torch

    if not cfg.target_samples:
        cfg.target_samples = cfg.effective_target
    cfg.batch_size = min(cfg.batch_size, profile.max_batch)
    torch.set_num_threads(profile.threads)


def choose_profile(name: str, memory_mb: int | None) -> EdgeProfile | None:
    """Validate ``--profile``; for edge, cap this process's memory now.

    torch is imported first, uncapped, so a cap too small for it is reported as a
    bad value rather than as a failure to print the error.
    """
    if name not in PROFILES:
        raise typer.BadParameter(f"--profile must be one of {', '.join(PROFILES)}, not {name!r}")
    if name != "edge":
        if memory_mb is not None:
            raise typer.BadParameter("--memory-mb only applies to --profile edge")
        return None
    try:
        profile = EdgeProfile() if memory_mb is None else EdgeProfile(memory_mb=memory_mb)
    except ProfileError as exc:
        raise typer.BadParameter(str(exc)) from None
    import torch  # noqa: F401 - the biggest mapping a node makes

    used = address_space_bytes()
    if used is not None and used + MIN_HEADROOM_BYTES > profile.memory_mb * 2**20:
        raise typer.BadParameter(
            f"--memory-mb {profile.memory_mb} leaves no room: torch alone maps "
            f"{used // 2**20} MiB, and a node needs {MIN_HEADROOM_BYTES // 2**20} MiB more"
        )
    apply_edge(profile)
    return profile


@contextlib.contextmanager
def memory_guard(profile: EdgeProfile | None, err: Console) -> Iterator[None]:
    """Under the edge profile, running out of the capped memory is a clear error."""
    # Ballast: freed on failure so that reporting it (rich, lazy imports) has room.
    ballast = bytearray(REPORT_RESERVE_BYTES) if profile is not None else None
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        oom = isinstance(exc, MemoryError) or "can't allocate memory" in str(exc)
        if profile is None or not oom:
            raise
        del ballast
        err.print(
            f"[red]error:[/] out of memory under the edge profile's {profile.memory_mb} MiB "
            f"cap ({str(exc)[:200]}); raise --memory-mb or shrink the model/batch"
        )
        raise typer.Exit(1) from None


def load_factory(spec: str) -> Callable[[], object]:
    mod, sep, attr = spec.partition(":")
    if not sep:
        raise typer.BadParameter(f"--model-factory must be 'module:callable', got {spec!r}")
    try:
        fn = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise typer.BadParameter(f"cannot import {spec!r}: {exc}") from None
    if not callable(fn):
        raise typer.BadParameter(f"{spec!r} is not callable")
    return fn  # type: ignore[no-any-return]


async def run_node(
    node: Node,
    *,
    health_listen: str | None = None,
    serve_model: Path | None = None,
    serve_listen: str = "127.0.0.1:8081",
    model_factory: str = DEFAULT_FACTORY,
    follow_run: str | None = None,
) -> None:
    """Run ``node`` with the optional health and inference servers until it stops."""
    # A seed bootstraps from nobody but itself (one config for every pod lists pod 0).
    seed = all(c.peer_id == node.peer_id for c in node.config.bootstrap)
    if follow_run is not None:
        from shoal.training.state_sync import STATE_MESSAGES

        for t in STATE_MESSAGES:  # a follower asks trainers for their state
            node.codec.register(t)
    runner = asyncio.create_task(node.run())
    ready = asyncio.create_task(node.ready.wait())
    await asyncio.wait({runner, ready}, return_when=asyncio.FIRST_COMPLETED)
    if runner.done():
        ready.cancel()
        await runner  # raises what stopped it
        return
    readiness = Readiness("joining")
    closers: list[Callable[[], Awaitable[None]]] = []
    try:
        gate: Callable[[], str | None] | None = None
        if serve_model is not None or follow_run is not None:
            gate = await _start_inference(
                node, serve_model, follow_run, serve_listen, model_factory, closers
            )
        if health_listen is not None:
            health = HealthServer(node, readiness)
            await health.start(health_listen)
            closers.append(health.aclose)
        node.spawn(watch_membership(node, readiness, seed, gate))
        await runner
    finally:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                await close()
        if not runner.done():
            node.stop()
            await runner


async def _start_inference(
    node: Node,
    directory: Path | None,
    follow_run: str | None,
    listen: str,
    factory_spec: str,
    closers: list[Callable[[], Awaitable[None]]],
) -> Callable[[], str | None]:
    import torch

    from shoal.training.inference import ModelServer
    from shoal.wire.contact import split_addr

    factory = load_factory(factory_spec)

    def build() -> torch.nn.Module:
        model = factory()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{factory_spec} returned {type(model).__name__}, not a Module")
        return model

    server = ModelServer(directory, build, (node, follow_run) if follow_run else None)
    http = HttpServer({"/predict": server.handle_predict, "/model": server.handle_model})
    host, port = split_addr(listen)
    bound = await http.start(host, port)
    (node.config.data_dir / SERVE_FILE).write_text(json.dumps({"addr": f"{bound[0]}:{bound[1]}"}))
    closers.append(http.aclose)
    node.spawn(server.watch())
    return lambda: None if server.served is not None else "waiting-for-verified-model"
