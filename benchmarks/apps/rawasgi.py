"""Raw ASGI loop: a set of ``send`` callables and ``await send(...)`` to each in turn.

The simplest fan-out an ASGI app can write, and the baseline for what the ASGI server itself
costs per delivery. It has no queue, so one client that stops reading stalls everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from .. import protocol

Scope = dict[str, Any]
Send = Any
Receive = Any


def create_app() -> Any:
    sends: set[Send] = set()
    tasks: set[asyncio.Task[None]] = set()

    async def publish(text: str) -> None:
        event = {"type": "websocket.send", "text": text}
        for send in list(sends):
            with contextlib.suppress(Exception):  # gone: its own handler removes it
                await send(event)

    async def handle(send: Send, text: str | None) -> None:
        cmd = protocol.parse(text)
        if cmd is None:
            return
        if cmd.op == "burst":
            for seq in range(int(cmd.args[0])):
                await publish(protocol.message(seq, int(cmd.args[1])))
        elif cmd.op == "steady":
            rate, seconds, size = cmd.args
            protocol.spawn(protocol.run_steady(publish, rate, seconds, int(size)), tasks)
        elif cmd.op == "fill":
            for chunk in protocol.fill_chunks(int(cmd.args[0])):
                await send({"type": "websocket.send", "text": chunk})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "websocket":
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        sends.add(send)
        try:
            while True:
                event = await receive()
                if event["type"] == "websocket.disconnect":
                    return
                await handle(send, event.get("text"))
        finally:
            sends.discard(send)

    return app


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
