"""A recording ASGI ``send`` for registry tests that need no socket."""

from __future__ import annotations

import asyncio
from typing import Any

from asgi_groups import Connection


class Outbox:
    """Collects what a connection writes; can be blocked to play a slow client."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, event: Any) -> None:
        await self.gate.wait()
        self.events.append(dict(event))

    @property
    def texts(self) -> list[str]:
        return [e["text"] for e in self.events if e["type"] == "websocket.send" and "text" in e]

    @property
    def closes(self) -> list[int]:
        return [e["code"] for e in self.events if e["type"] == "websocket.close"]


async def drained(*conns: Connection) -> None:
    """Let every writer run until nothing is queued: open connections until their queues are
    empty, closing ones until their close frame is written (``wait_closed``). Event-loop turns
    only, no wall-clock sleeps; what was written is then in the ``Outbox``."""
    for conn in conns:
        if not conn.is_open:
            await conn.wait_closed()
    for _ in range(10_000):
        if all(c.queued == (0, 0) for c in conns):
            return
        await asyncio.sleep(0)
    raise AssertionError("writers did not drain")


def owner_task() -> tuple[asyncio.Task[None], asyncio.Event]:
    """A task standing in for the one that serves a socket, and an event set when it is
    cancelled (what the library does to a socket whose close never completes)."""
    cancelled = asyncio.Event()

    async def owner() -> None:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    return asyncio.get_running_loop().create_task(owner()), cancelled
