"""A feed for slow-reader tests: every socket on ``/ws`` gets a steady stream of frames.

Run it in a child process under any server (``tests.support.slow_app:app``). A background task
broadcasts ``SLOW_FRAME_BYTES`` of text every ``SLOW_INTERVAL`` seconds to the group ``feed``
that every socket joins, so a client that never reads soon overflows its queue and is closed
with 1013. ``SLOW_CLOSE_TIMEOUT`` sets ``QueueLimits.close_timeout``. Each frame starts with
its sequence number, so a reader can check it misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from asgi_groups import QueueLimits, Registry, WsView
from asgi_groups.errors import RegistryClosed
from asgi_groups.types import Message, Receive, Scope, Send

from .servers import run_lifespan

FRAME_BYTES = int(os.environ.get("SLOW_FRAME_BYTES", "16384"))
INTERVAL = float(os.environ.get("SLOW_INTERVAL", "0.005"))
CLOSE_TIMEOUT = float(os.environ.get("SLOW_CLOSE_TIMEOUT", "5"))

registry = Registry(limits=QueueLimits(close_timeout=CLOSE_TIMEOUT))


class Feed(WsView):
    """Joins ``feed``; what it is sent is ignored (the inbound size limit still applies)."""

    groups = ("feed",)


async def push() -> None:
    """Broadcast a numbered frame to ``feed`` every ``INTERVAL`` seconds, forever."""
    padding = "x" * FRAME_BYTES
    number = 0
    while True:
        number += 1
        try:
            await registry.send_group("feed", f"{number}|{padding}")
        except RegistryClosed:  # shutting down
            return
        await asyncio.sleep(INTERVAL)


feed = Feed.as_asgi(registry=registry)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/ws``: the feed; the lifespan starts the registry and the pusher."""
    if scope["type"] == "websocket":
        await feed(scope, receive, send)
    elif scope["type"] == "lifespan":
        pusher: asyncio.Task[None] | None = None

        async def started(message: Message) -> None:
            nonlocal pusher
            if message["type"] == "lifespan.startup.complete":
                pusher = asyncio.get_running_loop().create_task(push())
            elif message["type"] == "lifespan.shutdown.complete" and pusher is not None:
                pusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pusher
            await send(message)

        await run_lifespan(registry, receive, started)
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
