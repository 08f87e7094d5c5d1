"""The no-ASGI limit: a picows server writing each message to every socket directly.

One ``transport.send`` (one write) per delivery, no queue, no ASGI, no per-message task: the
cheapest fan-out Python can do on this machine, the yardstick the other systems are divided by.
"""

from __future__ import annotations

import asyncio
from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

from .. import protocol


class Hub:
    """Every open transport, and the commands that fan out to them."""

    def __init__(self) -> None:
        self.transports: set[WSTransport] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    def broadcast(self, text: str) -> None:
        data = text.encode()
        for transport in self.transports:
            transport.send(WSMsgType.TEXT, data)

    async def publish(self, text: str) -> None:
        self.broadcast(text)

    def handle(self, transport: WSTransport, text: str) -> None:
        cmd = protocol.parse(text)
        if cmd is None:
            return
        if cmd.op == "burst":
            m, size = int(cmd.args[0]), int(cmd.args[1])
            for seq in range(m):
                self.broadcast(protocol.message(seq, size))
        elif cmd.op == "steady":
            rate, seconds, size = cmd.args
            protocol.spawn(protocol.run_steady(self.publish, rate, seconds, int(size)), self.tasks)
        elif cmd.op == "fill":
            for chunk in protocol.fill_chunks(int(cmd.args[0])):
                transport.send(WSMsgType.TEXT, chunk.encode())


class Listener(WSListener):
    """One server-side socket: registers itself with the hub and forwards commands."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.hub.transports.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.hub.transports.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.hub.handle(transport, frame.get_payload_as_ascii_text())
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


async def serve(host: str, port: int) -> None:
    hub = Hub()

    def factory(request: Any) -> Listener:
        return Listener(hub)

    server = await ws_create_server(factory, host, port, backlog=4096)
    async with server:
        await server.serve_forever()
