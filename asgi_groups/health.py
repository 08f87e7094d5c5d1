"""Probes and the admin view: liveness, readiness, and each process's stats published to Redis.

``livez()`` and ``readyz(registry)`` are small ASGI apps for Kubernetes-style probes (mount
them like any ASGI app; ``with_routes`` serves them from frameworks whose routes cannot hold
one, e.g. Quart). ``StatsReporter`` writes a snapshot of a registry to Redis every few seconds,
which ``asgi-groups stats --redis URL`` reads to show a whole deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .errors import BackendUnavailable
from .registry import Registry
from .types import ASGIApp, Receive, Scope, Send

__all__ = [
    "LARGEST_GROUPS",
    "STATS_INTERVAL",
    "Endpoint",
    "Periodic",
    "StatsReporter",
    "livez",
    "not_ready",
    "process_stats",
    "readyz",
    "with_routes",
]

logger = logging.getLogger("asgi_groups.health")

#: Seconds between two stats snapshots a process publishes to Redis.
STATS_INTERVAL = 5.0
#: A published snapshot expires after this many intervals without a new one.
STATS_TTL_INTERVALS = 3
#: How many of the largest groups (by local connections) a snapshot lists.
LARGEST_GROUPS = 10


class Endpoint:
    """An ASGI app as an object, so that framework routes (Starlette's ``Route``) mount it as
    an app rather than take it for a request handler, as they do a plain function."""

    __slots__ = ("_serve",)

    def __init__(self, serve: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self._serve = serve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._serve(scope, receive, send)


async def _answer(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"cache-control", b"no-store")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def livez() -> ASGIApp:
    """Liveness: 200 ``ok`` whenever the process answers HTTP at all."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await _answer(send, 200, b"ok\n", b"text/plain; charset=utf-8")

    return Endpoint(app)


def not_ready(registry: Registry) -> str | None:
    """Why ``registry`` cannot serve now (not started, backend down), or None when it can."""
    if not registry.started:
        return "registry not started"
    if getattr(registry.backend, "down", False):
        return f"backend {registry.backend.name} down"
    return None


def readyz(registry: Registry) -> ASGIApp:
    """Readiness: 200 ``ready`` while ``registry`` is started and its backend is up, else 503
    with the reason (a Redis outage shows within the backend's health-check interval). On a
    server without lifespan the first probe starts the registry."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if not registry.started and not registry.closed:  # no lifespan ran: a first use
            try:
                await registry.start()
            except Exception as exc:  # e.g. Redis unreachable: the answer says so
                logger.info("readiness: the registry cannot start: %s", exc)
        why = not_ready(registry)
        if why is None:
            await _answer(send, 200, b"ready\n", b"text/plain; charset=utf-8")
        else:
            await _answer(send, 503, f"not ready: {why}\n".encode(), b"text/plain; charset=utf-8")

    return Endpoint(app)


def with_routes(app: ASGIApp, routes: Mapping[str, ASGIApp]) -> ASGIApp:
    """``app`` with each HTTP path of ``routes`` answered by its ASGI app (exact match);
    everything else goes to ``app``. For frameworks whose routes cannot hold an ASGI app."""
    table = dict(routes)

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        target = table.get(scope["path"]) if scope["type"] == "http" else None
        await (target or app)(scope, receive, send)

    return Endpoint(serve)


def process_stats(registry: Registry, largest: int = LARGEST_GROUPS) -> dict[str, Any]:
    """A JSON-able snapshot of this process: counts, largest groups, queue depth, backend."""
    stats = registry.stats()
    # presence counts authenticated connections, which is what groups hold in practice
    sizes = [(sum(c.values()), len(c), g) for g, c in registry.router.presence_snapshot().items()]
    sizes.sort(key=lambda item: (-item[0], item[2]))
    backend = stats.backend
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": round(time.time(), 3),
        "connections": stats.connections,
        "users": stats.users,
        "groups": stats.groups,
        "largest_groups": [
            {"group": g, "connections": n, "users": u} for n, u, g in sizes[:largest]
        ],
        "queue_depth": registry.queue_depth(),
        "queue_peak": registry.queue_peak,
        "messages_sent": stats.messages_sent,
        "deliveries": stats.deliveries,
        "backend": {
            "name": registry.backend.name,
            "up": not backend.get("down", False),
            "reconnects": backend.get("reconnects", 0),
            "errors": backend.get("errors", 0),
        },
    }


class Periodic:
    """A registry companion that calls :meth:`tick` every ``interval`` seconds while the
    registry runs; a failing tick is logged and the next one comes on time."""

    #: What the log says a failed tick did not do, and on which logger.
    failure = "periodic work not done"
    log = logger

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        """One round of the work."""
        raise NotImplementedError

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                self.log.exception(self.failure)
            await asyncio.sleep(self.interval)


class StatsReporter(Periodic):
    """Publishes :func:`process_stats` to Redis every ``interval`` seconds while the registry
    runs (a registry companion: ``registry.add_companion(StatsReporter(registry))``).

    Does nothing on a backend other than Redis. Each snapshot expires after
    ``STATS_TTL_INTERVALS`` intervals, so a process that died drops out of the view.
    """

    failure = "stats not published"

    def __init__(self, registry: Registry, interval: float = STATS_INTERVAL) -> None:
        super().__init__(interval)
        self.registry = registry

    async def start(self) -> None:
        if hasattr(self.registry.backend, "put_stats"):
            await super().start()

    async def publish(self) -> None:
        """Publish one snapshot now (``BackendUnavailable`` while Redis is unreachable)."""
        snapshot = process_stats(self.registry)
        fields = {"json": json.dumps(snapshot)}
        ttl = self.interval * STATS_TTL_INTERVALS
        await self.registry.backend.put_stats(fields, ttl)  # type: ignore[attr-defined]

    async def tick(self) -> None:
        try:
            await self.publish()
        except BackendUnavailable as exc:  # expected while Redis is away: not a failure
            logger.debug("stats not published: %s", exc)
