"""Readiness follows the backend: false within the health-check interval once Redis stops,
true again once it is back; liveness stays true throughout."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asgi_groups import Registry
from asgi_groups.health import livez, readyz

from .support.redis import FAST, RedisServer
from .support.servers import free_port
from .test_metrics import get

#: Longest a test waits for the backend to come back after Redis restarts.
PATIENCE = 15.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone (it is stopped and started again)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not found: apt-get install redis-server")
    server = RedisServer(binary, free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def until_status(app: object, status: int, timeout: float) -> float:
    """Seconds until ``app`` answers ``status`` (fails after ``timeout``)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if (await get(app))[0] == status:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {status} within {timeout} s")


async def test_readiness_follows_redis(own_redis: RedisServer) -> None:
    interval = FAST["health_check_interval"]
    async with Registry(own_redis.url, prefix="health", **FAST) as registry:
        ready, alive = readyz(registry), livez()
        assert await get(ready) == (200, "ready\n")
        own_redis.stop()
        # a silent socket is caught by a PING every interval, answered within socket_timeout
        limit = interval + FAST["socket_timeout"] + 0.5
        took = await until_status(ready, 503, limit)
        _, body = await get(ready)
        assert "backend redis down" in body
        assert (await get(alive))[0] == 200
        own_redis.start()
        await until_status(ready, 200, PATIENCE)
    print(f"readiness went false {took:.2f} s after Redis stopped (interval {interval} s)")


async def test_readiness_false_when_redis_goes_silent(own_redis: RedisServer) -> None:
    """A frozen Redis (no reset, no answer) is caught by the health-check PING."""
    assert own_redis.proc is not None
    interval = FAST["health_check_interval"]
    async with Registry(own_redis.url, prefix="health", **FAST) as registry:
        ready = readyz(registry)
        assert (await get(ready))[0] == 200
        own_redis.proc.send_signal(signal.SIGSTOP)
        try:
            took = await until_status(ready, 503, interval + FAST["socket_timeout"] + 0.5)
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        await until_status(ready, 200, PATIENCE)
    print(f"readiness went false {took:.2f} s after Redis froze (interval {interval} s)")
