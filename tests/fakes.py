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
    """Let every writer run until nothing is queued (event-loop turns, no wall-clock sleeps)."""
    for _ in range(10_000):
        if all(c.queued[0] == 0 and c._writer is None for c in conns):
            return
        await asyncio.sleep(0)
    raise AssertionError("writers did not drain")
