"""asgi_groups under test: a ``WsView`` that joins one group; commands become ``send_group`` calls.

``create_app(redis_url)`` picks the backend (memory when ``None``); ``coalesce`` turns on the
opt-in ``QueueLimits(coalesce=16)``: queued messages leave as newline-delimited frames (the
harness skips that system when the installed core lacks it, see :func:`coalesce_supported`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from asgi_groups import GroupsMiddleware, QueueLimits, Registry, WsView
from asgi_groups.types import Receive, Scope, Send

from .. import protocol

#: Messages joined into one frame in coalescing mode (``QueueLimits.coalesce``).
COALESCE = 16


def coalesce_supported() -> bool:
    """True once ``QueueLimits`` has a ``coalesce`` field (the hook the coalescing mode needs)."""
    return any(f.name == "coalesce" for f in dataclasses.fields(QueueLimits))


class BenchView(WsView):
    """Joins the benchmark group; ``burst``/``steady`` publish to it, ``fill`` stalls the caller."""

    groups = (protocol.GROUP,)
    join_user_groups = False
    tasks: set[asyncio.Task[None]] = set()

    async def publish(self, text: str) -> None:
        await self.registry.send_group(protocol.GROUP, text)

    async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
        cmd = protocol.parse(self.kwargs.get("text"))
        if cmd is None:
            return
        if cmd.op == "burst":
            m, size = int(cmd.args[0]), int(cmd.args[1])
            for seq in range(m):
                await self.registry.send_group(protocol.GROUP, protocol.message(seq, size))
        elif cmd.op == "steady":
            rate, seconds, size = cmd.args
            protocol.spawn(protocol.run_steady(self.publish, rate, seconds, int(size)), self.tasks)
        elif cmd.op == "fill":
            for chunk in protocol.fill_chunks(int(cmd.args[0])):
                await self.send_text(chunk)


def create_app(redis_url: str | None = None, *, coalesce: bool = False) -> Any:
    """The middleware-wrapped view, handed to the server as is (no wrapper frame per socket).

    The middleware starts the registry on the first handshake; the lifespan scope reaches the
    view, which refuses it, and uvicorn carries on without lifespan events.
    """
    limits = QueueLimits(coalesce=COALESCE) if coalesce else QueueLimits()
    return GroupsMiddleware(BenchView.as_asgi(), Registry(redis_url, limits=limits))
