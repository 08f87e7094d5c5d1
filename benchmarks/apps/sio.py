"""python-socketio under test: every client enters one room; ``emit(..., to=room)`` fans out.

``redis_url`` selects ``AsyncRedisManager``; otherwise the default in-process manager.
"""

from __future__ import annotations

import asyncio
from typing import Any

import socketio

from .. import protocol


def create_app(redis_url: str | None = None) -> Any:
    manager = socketio.AsyncRedisManager(redis_url) if redis_url else None
    sio = socketio.AsyncServer(
        async_mode="asgi", client_manager=manager, cors_allowed_origins="*", logger=False
    )
    tasks: set[asyncio.Task[None]] = set()

    async def publish(text: str) -> None:
        await sio.emit(protocol.SIO_MESSAGE, text, to=protocol.GROUP)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        await sio.enter_room(sid, protocol.GROUP)

    @sio.on(protocol.SIO_TRIGGER)
    async def trigger(sid: str, text: str) -> None:
        cmd = protocol.parse(text)
        if cmd is None:
            return
        if cmd.op == "burst":
            m, size = int(cmd.args[0]), int(cmd.args[1])
            for seq in range(m):
                await publish(protocol.message(seq, size))
        elif cmd.op == "steady":
            rate, seconds, size = cmd.args
            protocol.spawn(protocol.run_steady(publish, rate, seconds, int(size)), tasks)
        elif cmd.op == "fill":
            for chunk in protocol.fill_chunks(int(cmd.args[0])):
                await sio.emit(protocol.SIO_MESSAGE, chunk, to=sid)

    return socketio.ASGIApp(sio)
