"""Fallback no-ASGI limit when picows is missing: ``websockets`` with its ``broadcast()``."""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.asyncio.server import serve as ws_serve

from .. import protocol


async def serve(host: str, port: int) -> None:
    clients: set[ServerConnection] = set()
    tasks: set[asyncio.Task[None]] = set()

    async def publish(text: str) -> None:
        broadcast(clients, text)

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            async for text in ws:
                cmd = protocol.parse(text if isinstance(text, str) else None)
                if cmd is None:
                    continue
                if cmd.op == "burst":
                    for seq in range(int(cmd.args[0])):
                        broadcast(clients, protocol.message(seq, int(cmd.args[1])))
                elif cmd.op == "steady":
                    rate, seconds, size = cmd.args
                    protocol.spawn(protocol.run_steady(publish, rate, seconds, int(size)), tasks)
                elif cmd.op == "fill":
                    for chunk in protocol.fill_chunks(int(cmd.args[0])):
                        await ws.send(chunk)
        finally:
            clients.discard(ws)

    async with ws_serve(
        handler, host, port, ping_interval=None, compression=None, backlog=4096
    ) as server:
        await server.serve_forever()
