"""The wire protocol every benchmark app speaks, shared by the apps, the client and the publisher.

The client drives a server with short text commands (``burst``, ``steady``, ``fill``); the server
answers with fixed-size text messages that start with their publish time, so the client can
measure latency without any per-system parsing. Everything here is tiny on purpose: the apps
must spend their time in the system under test, not in the harness.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

GROUP = "bench"
#: Event names used by the Socket.IO apps (short, so the frames stay close to the payload size).
SIO_TRIGGER = "t"
SIO_MESSAGE = "m"
#: Size of each chunk the server sends to a connection that asked to be filled.
FILL_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed trigger: ``burst m size`` / ``steady rate seconds size`` / ``fill bytes``."""

    op: str
    args: tuple[float, ...]


def parse(text: str | None) -> Command | None:
    """``"burst 50 100"`` → ``Command("burst", (50.0, 100.0))``; anything else → None."""
    if not text:
        return None
    op, *rest = text.split()
    try:
        return Command(op, tuple(float(a) for a in rest))
    except ValueError:
        return None


def burst(m: int, size: int) -> str:
    return f"burst {m} {size}"


def steady(rate: float, seconds: float, size: int) -> str:
    return f"steady {rate} {seconds} {size}"


def fill(nbytes: int) -> str:
    return f"fill {nbytes}"


def message(seq: int, size: int, ts_ns: int | None = None) -> str:
    """A ``size``-byte ASCII message: ``"<CLOCK_MONOTONIC ns> <seq> xxx…"`` (no newline)."""
    head = f"{time.monotonic_ns() if ts_ns is None else ts_ns} {seq} "
    return head + "x" * max(0, size - len(head))


def fill_chunks(nbytes: int) -> list[str]:
    """Large filler messages totalling at least ``nbytes`` (used to stall a slow reader)."""
    count = max(1, -(-nbytes // FILL_CHUNK))
    return ["y" * FILL_CHUNK] * count


async def run_steady(
    publish: Callable[[str], Awaitable[object]], rate: float, seconds: float, size: int
) -> None:
    """Publish ``rate`` messages per second for ``seconds`` on a fixed schedule.

    Each message is stamped just before its publish call; a publisher that falls behind
    catches up back to back, so an overloaded system shows its queueing delay in the latency.
    """
    period_ns = 1e9 / rate
    start = time.monotonic_ns()
    for seq in range(int(rate * seconds)):
        delay = (start + seq * period_ns - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        await publish(message(seq, size))


def spawn(coro: Awaitable[None], keep: set[asyncio.Task[None]]) -> None:
    """Run ``coro`` in the background, holding a reference until it finishes."""
    task: asyncio.Task[None] = asyncio.ensure_future(coro)
    keep.add(task)
    task.add_done_callback(keep.discard)
