"""Eager first step of an ASGI send: ``asgi_groups.eager.start`` against an eager task.

Python 3.12 added ``asyncio.Task(..., eager_start=True)``, which also runs a coroutine up to
its first wait in the caller. This measures both, per send, for a send that completes at once
(an idle socket: the common case) and one that has to wait (a full transport), against a plain
task as the baseline. Runs on any Python >= 3.11 with nothing installed but this checkout::

    python -m benchmarks.eager            # or: python3.12 benchmarks/eager.py
"""

from __future__ import annotations

import asyncio
import importlib.util
import pathlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

_EAGER = pathlib.Path(__file__).resolve().parent.parent / "asgi_groups" / "eager.py"
_spec = importlib.util.spec_from_file_location("_eager", _EAGER)
assert _spec is not None and _spec.loader is not None
eager = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eager)

N = 100_000
ROUNDS = 5
EVENT = {"type": "websocket.send", "text": "x" * 100}


async def ready_send(event: Any) -> None:
    """An ASGI send to an idle socket: returns without waiting."""


async def run(case: Callable[[asyncio.AbstractEventLoop], Any]) -> float:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    await case(loop)
    return (time.perf_counter() - start) / N * 1e9


async def plain_task(loop: asyncio.AbstractEventLoop) -> None:
    for _ in range(N):
        loop.create_task(ready_send(EVENT))
    await asyncio.sleep(0)


async def start_in_place(loop: asyncio.AbstractEventLoop) -> None:
    for _ in range(N):
        rest = eager.start(ready_send(EVENT))
        if rest is not None:
            loop.create_task(_await(rest))


async def eager_task(loop: asyncio.AbstractEventLoop) -> None:
    for _ in range(N):
        asyncio.Task(ready_send(EVENT), loop=loop, eager_start=True)  # type: ignore[call-arg]


async def _await(awaitable: Any) -> None:
    await awaitable


def waiting_cases() -> dict[str, Callable[[asyncio.AbstractEventLoop], Any]]:
    """A send that waits once on a future resolved by the loop: the slow-socket path."""

    async def waiting_send(fut: asyncio.Future[None]) -> None:
        await fut

    async def start_then_task(loop: asyncio.AbstractEventLoop) -> None:
        futures = []
        for _ in range(N):
            fut = loop.create_future()
            futures.append(fut)
            rest = eager.start(waiting_send(fut))
            if rest is not None:
                loop.create_task(_await(rest))
        for fut in futures:
            fut.set_result(None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def eager_waiting(loop: asyncio.AbstractEventLoop) -> None:
        futures = []
        for _ in range(N):
            fut = loop.create_future()
            futures.append(fut)
            asyncio.Task(waiting_send(fut), loop=loop, eager_start=True)  # type: ignore[call-arg]
        for fut in futures:
            fut.set_result(None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    cases: dict[str, Callable[[asyncio.AbstractEventLoop], Any]] = {
        "waits: eager.start + task": start_then_task
    }
    if sys.version_info >= (3, 12):
        cases["waits: eager task"] = eager_waiting
    return cases


def main() -> None:
    cases: dict[str, Callable[[asyncio.AbstractEventLoop], Any]] = {
        "ready: plain task (baseline)": plain_task,
        "ready: eager.start": start_in_place,
    }
    if sys.version_info >= (3, 12):
        cases["ready: eager task"] = eager_task
    cases.update(waiting_cases())
    print(f"Python {sys.version.split()[0]}, {N:,} sends per round, median of {ROUNDS} rounds")
    for name, case in cases.items():
        figures = [asyncio.run(run(case)) for _ in range(ROUNDS)]
        print(f"  {name:32s} {statistics.median(figures):8.0f} ns/send")


if __name__ == "__main__":
    main()
