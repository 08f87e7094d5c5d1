"""Soak: thousands of connections churning through a Redis-backed server for minutes.

Opt-in (``pytest -m soak``). Tunable from the environment: ``SOAK_SECONDS`` (churn time,
default 300), ``SOAK_CONNECTIONS`` (the population kept open, default 5,000) and ``SOAK_RATE``
(connections replaced per second, default 100, so each lives about 50 s).

The server runs in its own process (``tests.support.probe_app``) so that its memory, tasks and
file descriptors can be read from outside. First the population is opened; then, at a steady
rate, the oldest connection is closed and a new one opens, is put in its user's group by the
server, sends a message to that group and waits to receive it. Each group has about ten
members, so every message fans out and every connect and disconnect announces presence.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.redis import RedisServer

from .support.hostile import debug, open_fds, rss_bytes
from .support.servers import serve_process

pytestmark = pytest.mark.soak

SECONDS = float(os.environ.get("SOAK_SECONDS", "300"))
CONNECTIONS = int(os.environ.get("SOAK_CONNECTIONS", "5000"))
RATE = float(os.environ.get("SOAK_RATE", "100"))
GROUPS = max(1, CONNECTIONS // 10)
#: Churn time before the memory baseline is taken (allocator and caches settle).
WARMUP = min(60.0, SECONDS / 3)
#: RSS after warm-up may vary by this fraction of the baseline.
RSS_TOLERANCE = 0.10
#: Handshakes in flight at once while the population is opened.
RAMP_CONCURRENCY = 50
REVALIDATE = 2.0


@dataclass
class Server:
    address: str
    pid: int
    prefix: str
    redis: RedisServer

    @property
    def origin(self) -> str:
        return f"http://{self.address}"


@pytest.fixture
def server(redis_server: RedisServer) -> Iterator[Server]:
    if not redis_server.running:
        redis_server.start()
    prefix = "soak" + uuid.uuid4().hex[:8]
    env = {
        "PROBE_REDIS_URL": redis_server.url,
        "PROBE_PREFIX": prefix,
        "PROBE_GROUPS": str(GROUPS),
        "PROBE_REVALIDATE": str(REVALIDATE),
    }
    with serve_process("tests.support.probe_app:app", env=env) as (address, proc):
        yield Server(address, proc.pid, prefix, redis_server)


@dataclass
class Churn:
    """What the clients saw."""

    opened: int = 0
    closed: int = 0
    failures: list[str] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)


async def open_client(server: Server, user: int, churn: Churn) -> ClientConnection:
    """Connect as ``user``, send to the user's group and wait for the message to come back."""
    ws = await connect(
        f"ws://{server.address}/ws",
        origin=server.origin,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"session={user}"},
        compression=None,
        ping_interval=None,
        max_queue=None,  # what the group sends while this client idles just accumulates
        open_timeout=30,
    )
    try:
        async with asyncio.timeout(30):
            while json.loads(await ws.recv())["type"] != "hello":
                pass
            marker = uuid.uuid4().hex
            group = f"g{user % GROUPS}"
            await ws.send(json.dumps({"type": "Group", "group": group, "text": marker}))
            while json.loads(await ws.recv()).get("text") != marker:
                pass
    except BaseException:
        await ws.close()
        raise
    churn.opened += 1
    return ws


async def close_client(ws: ClientConnection, churn: Churn) -> None:
    await ws.close()
    churn.closed += 1


async def guarded(churn: Churn, what: str, action: Awaitable[Any]) -> Any:
    try:
        return await action
    except Exception as exc:
        churn.failures.append(f"{what}: {exc!r}")
        return None


async def sample(server: Server, churn: Churn, stop: asyncio.Event) -> None:
    started = time.monotonic()
    while not stop.is_set():
        churn.rss.append((time.monotonic() - started, rss_bytes(server.pid)))
        churn.fds.append(open_fds(server.pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def settled(
    probe: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], timeout: float
) -> Any:
    """Poll ``probe`` once a second until ``ok``; the last value either way."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if ok(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(1.0)


def own_fds(server: Server) -> int:
    """The server's open file descriptors, less its connections to Redis (a pool that keeps
    up to ``max_connections`` idle connections for reuse, by design)."""
    return open_fds(server.pid) - len(server.redis.clients(server.prefix + ":"))


def presence_keys(server: Server) -> list[str]:
    with server.redis.client() as client:
        return list(client.scan_iter(f"{server.prefix}:presence:*"))


@pytest.mark.timeout(SECONDS + 600)  # the ramp, the churn, then the drain and settling
async def test_soak_churn_leaves_nothing_behind(server: Server) -> None:
    """Replacing connections at a steady rate for SOAK_SECONDS keeps the server's RSS within
    10% of its post-warm-up level; afterwards the registry is empty, no presence key is left
    in Redis, and the server's asyncio tasks and file descriptors (other than its Redis
    connection pool) are back to their baseline."""
    churn = Churn()
    users = itertools.count(1)
    idle = lambda state: state["connections"] == 0  # noqa: E731

    # the baseline: the server before its first socket (no revalidator: it runs only while
    # sockets are watched, so tasks back to this baseline also means nothing is watched)
    base = await debug(server.address)
    base_fds = own_fds(server)

    stop = asyncio.Event()
    sampler = asyncio.create_task(sample(server, churn, stop))
    population: deque[ClientConnection] = deque()
    gate = asyncio.Semaphore(RAMP_CONCURRENCY)

    async def add() -> None:
        async with gate:
            ws = await guarded(churn, "open", open_client(server, next(users), churn))
        if ws is not None:
            population.append(ws)

    ramp_started = time.monotonic()
    await asyncio.gather(*(add() for _ in range(CONNECTIONS)))
    ramp = time.monotonic() - ramp_started
    during = await debug(server.address)
    assert during["connections"] == len(population) == CONNECTIONS, (during, churn.failures[:5])

    churn_started = time.monotonic()
    in_flight: set[asyncio.Task[None]] = set()

    async def replace() -> None:
        if population:
            old = population.popleft()
            await guarded(churn, "close", close_client(old, churn))
        await add()

    tick = 0
    while time.monotonic() - churn_started < SECONDS:
        delay = churn_started + tick / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(replace())
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        tick += 1
    await asyncio.gather(*in_flight)
    achieved = tick / (time.monotonic() - churn_started)
    steady = await debug(server.address)

    await asyncio.gather(*(guarded(churn, "close", close_client(ws, churn)) for ws in population))
    population.clear()
    stop.set()
    await sampler

    after = await settled(lambda: debug(server.address), idle, 60)
    tasks = await settled(lambda: debug(server.address), lambda s: s["tasks"] <= base["tasks"], 30)
    keys = presence_keys(server)
    for _ in range(30):
        if not keys:
            break
        await asyncio.sleep(1.0)
        keys = presence_keys(server)
    fds = own_fds(server)
    for _ in range(30):
        if fds <= base_fds:
            break
        await asyncio.sleep(1.0)
        fds = own_fds(server)

    warm_rss = [rss for t, rss in churn.rss if t >= ramp + WARMUP]
    baseline = warm_rss[0] if warm_rss else churn.rss[-1][1]
    peak = max(warm_rss, default=baseline)
    summary = (
        f"ramp {CONNECTIONS} in {ramp:.1f}s; churn {SECONDS:.0f}s at {achieved:.0f}/s "
        f"({churn.opened} opened, {churn.closed} closed, {len(churn.failures)} failures); "
        f"RSS after warm-up {baseline / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB; "
        f"fds peak {max(churn.fds)} -> {fds} (baseline {base_fds}); "
        f"tasks {base['tasks']} -> {tasks['tasks']}; steady {steady['connections']} sockets, "
        f"{steady['groups']} groups; slow closed {steady['slow_closed']}"
    )
    print(summary)
    assert churn.failures == [], (summary, churn.failures[:10])
    assert achieved >= 0.9 * RATE, summary
    assert steady["slow_closed"] == 0, summary
    assert peak <= baseline * (1 + RSS_TOLERANCE), summary
    assert idle(after) and after["users"] == 0 and after["groups"] == 0, (summary, after)
    assert tasks["tasks"] <= base["tasks"], summary
    assert fds <= base_fds, summary
    assert keys == [], (summary, keys[:10])
