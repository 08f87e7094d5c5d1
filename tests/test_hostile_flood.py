"""Floods and slow readers: one abusive or stuck client must not cost the others or the server.

The inbound flood runs against a server in its own process, so its memory can be read from
/proc; the slow-reader test runs the server in this process, so every queue can be inspected
after every publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from asgi_groups import GroupsMiddleware, Registry, WsView, codes
from asgi_groups.limits import DEFAULT_QUEUE_LIMITS, MiB
from asgi_groups.messaging import (
    DEFAULT_RATE_BURST,
    DEFAULT_RATE_LIMIT,
    DEFAULT_RATE_LIMIT_STRIKES,
)

from .core_app import USERS
from .support.codecs import PlainCookie
from .support.hostile import chat, debug, rss_bytes
from .support.rawclient import RawClient
from .support.redis import eventually
from .support.servers import serve, serve_process
from .support.waiting import wait_until

ROOT = str(Path(__file__).resolve().parents[1])

# -- inbound flood ---------------------------------------------------------------------------

#: How long the flood lasts at least, and the flooding user (one connection at a time,
#: reconnecting as soon as it is closed). It also lasts until the bystander is done.
FLOOD_SECONDS = 2.0
FLOODERS = [11]
#: Memory the server may gain during the flood, measured on its resident set. A server that
#: buffered what it is sent would grow by the flood's volume (at least 4x this, whatever the
#: machine's speed: the flooder keeps going until it has sent that much).
RSS_BOUND = 16 * MiB
FLOOD_BYTES = 4 * RSS_BOUND + 1
#: The bystander's round trips during the flood, paced at 20 messages/s (within the default
#: rate limit). Every one must come back, in order; how fast is the benchmark's business
#: (``python -m benchmarks.flood``), since a latency bound fails on a loaded machine for nothing.
PINGS = 30
PROBE_INTERVAL = 0.05
#: How long to wait for any one reply before failing: a hang guard, not a latency bound.
GUARD = 30.0


@dataclass
class Server:
    address: str
    pid: int

    @property
    def origin(self) -> str:
        return f"http://{self.address}"


@pytest.fixture
def server() -> Iterator[Server]:
    with serve_process("tests.support.probe_app:app", env={"PROBE_PRESENCE": "0"}) as (
        address,
        proc,
    ):
        yield Server(address, proc.pid)


async def start_flooder(
    server: Server, seconds: float, users: list[int], *extra: str
) -> asyncio.subprocess.Process:
    """Start ``tests.support.flooder`` in its own process (``extra``: its options)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.flooder",
        *extra,
        server.address,
        str(seconds),
        *map(str, users),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def flood_report(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    """Release a held flooder (close its stdin) and read its JSON report."""
    assert proc.stdin is not None
    proc.stdin.close()
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    report: dict[str, Any] = json.loads(out)
    return report


async def ping(ws: ClientConnection, user: int, text: str) -> tuple[str, str]:
    """Send a direct message to oneself; the type and text of the next chat frame back."""
    await ws.send(chat("Direct", text, user_name=f"user{user}"))
    async with asyncio.timeout(GUARD):
        while (frame := json.loads(await ws.recv()))["type"] not in ("direct", "error"):
            pass
    return frame["type"], str(frame.get("text", frame.get("error")))


async def sample_rss(pid: int, stop: asyncio.Event) -> int:
    """The largest resident set seen every 20 ms until ``stop``."""
    peak = rss_bytes(pid)
    while not stop.is_set():
        peak = max(peak, rss_bytes(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.02)
    return peak


async def test_flood_is_refused_4429_memory_bounded_others_served(server: Server) -> None:
    """A client writing thousands of frames as fast as it can (reconnecting when closed) gets
    ``rate_limited`` error frames then 4429 on every connection; the server's RSS grows by less
    than 16 MiB while far more is thrown at it; another client, talking all through the flood,
    gets every one of its messages back, in order."""
    async with connect(
        f"ws://{server.address}/ws",
        origin=server.origin,  # type: ignore[arg-type]
        additional_headers={"Cookie": "session=2"},
    ) as probe:
        assert json.loads(await probe.recv())["type"] == "hello"
        # warm the server's code paths and allocator, so RSS growth is the flood's
        await flood_report(await start_flooder(server, 0.2, FLOODERS))
        assert await ping(probe, 2, "warm") == ("direct", "warm")
        rss_before = rss_bytes(server.pid)
        delivered = (await debug(server.address))["deliveries"]

        stop_rss = asyncio.Event()
        rss_task = asyncio.create_task(sample_rss(server.pid, stop_rss))
        flooder = await start_flooder(
            server, FLOOD_SECONDS, FLOODERS, "--hold", f"--min-bytes={FLOOD_BYTES}"
        )
        # the flood has reached the server (its first accepted messages were delivered) ...
        await eventually(lambda: debug(server.address), lambda s: s["deliveries"] > delivered)
        answers = []
        for n in range(PINGS):  # ... and goes on until the flooder is released below
            answers.append(await ping(probe, 2, f"ping {n}"))
            await asyncio.sleep(PROBE_INTERVAL)  # pacing, within the rate limit
        report = await flood_report(flooder)
        stop_rss.set()
        rss_peak = await rss_task
        only_probe = lambda state: state["connections"] == 1  # noqa: E731
        await eventually(lambda: debug(server.address), only_probe, timeout=GUARD)
        rss_after = rss_bytes(server.pid)
        assert await ping(probe, 2, "after") == ("direct", "after")

    summary = (
        f"{report['rounds']} flood connections, {report['frames_sent']} frames, "
        f"{report['bytes_sent'] / MiB:.0f} MiB; RSS {rss_before / MiB:.1f} -> peak "
        f"{rss_peak / MiB:.1f} -> {rss_after / MiB:.1f} MiB"
    )
    assert answers == [("direct", f"ping {n}") for n in range(PINGS)], summary
    assert report["bytes_sent"] >= FLOOD_BYTES, summary
    assert set(report["codes"]) == {codes.RATE_LIMITED}, summary
    assert set(report["refusals"]) == {DEFAULT_RATE_LIMIT_STRIKES + 1}, summary
    # the token bucket's own bound: the burst, plus what refilled while the socket was open
    for accepted, open_for in zip(report["accepted"], report["open_for"], strict=True):
        assert accepted <= DEFAULT_RATE_BURST + DEFAULT_RATE_LIMIT * open_for + 1, summary
    assert report["unexpected"] == [], summary
    assert rss_peak - rss_before < RSS_BOUND, summary
    assert rss_after - rss_before < RSS_BOUND, summary


# -- slow reader under a fast publisher ------------------------------------------------------

RATE = 1000  # broadcasts per second
SECONDS = 2.0
SIZE = 8 * 1024  # bytes per message: the queue's byte bound is reached in 128 messages


class Room(WsView):
    """Everyone joins ``room`` and only listens."""

    login_required = True
    groups = ["room"]


@pytest.fixture
async def room() -> AsyncIterator[tuple[str, Registry]]:
    registry = Registry()  # the default queue limits: 1000 frames, 1 MiB
    app = GroupsMiddleware(Room.as_asgi(), registry, sessions=PlainCookie(), users=USERS)
    async with registry, serve(app) as address:
        yield address, registry


def listener(address: str, user: int) -> Any:
    return connect(
        f"ws://{address}/ws",
        origin=f"http://{address}",  # type: ignore[arg-type]
        additional_headers={"Cookie": f"session={user}"},
        compression=None,
        max_queue=None,
    )


async def test_slow_reader_at_1000_broadcasts_per_second(room: tuple[str, Registry]) -> None:
    """While 2,000 messages of 8 KiB are published at 1,000/s, a client that never reads has
    its queue held within the limits (checked after every publish) and is closed with 1013;
    two reading clients receive every message, in order."""
    address, registry = room
    limits = DEFAULT_QUEUE_LIMITS
    stuck = RawClient(address, origin=f"http://{address}", cookie="session=3")
    await stuck.connect()
    total = int(RATE * SECONDS)
    try:
        async with listener(address, 1) as fast, listener(address, 2) as fast2:
            await wait_until(lambda: len(registry.connections()) == 3)
            stuck_conn = registry.connections(3)[0]

            async def read_all(ws: ClientConnection) -> list[int]:
                got: list[int] = []
                while len(got) < total:
                    got.append(int(str(await ws.recv()).split("|", 1)[0]))
                return got

            readers = [asyncio.create_task(read_all(ws)) for ws in (fast, fast2)]
            padding = "x" * SIZE
            peak = (0, 0)
            started = time.monotonic()
            for i in range(total):
                delay = started + i / RATE - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await registry.send_group("room", f"{i}|{padding}")
                for conn in registry.connections():
                    frames, size = conn.queued
                    assert frames <= limits.max_messages and size <= limits.max_bytes
                if stuck_conn.is_open:
                    peak = max(peak, stuck_conn.queued)
            received = await asyncio.wait_for(asyncio.gather(*readers), 30)
        for got in received:
            assert got == list(range(total))  # every message, in order
        assert registry.stats().slow_closed == 1
        assert peak[1] > limits.max_bytes // 2  # the stuck queue did fill up to the limit
        await stuck.read_all(timeout=20)
        assert stuck.close_code == codes.TRY_AGAIN_LATER
    finally:
        stuck.close()
    await wait_until(lambda: registry.stats().connections == 0)
