"""A WebSocket client that can stop reading: a plain socket driven by websockets' sans-I/O layer."""

from __future__ import annotations

import asyncio
import socket

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.typing import Origin
from websockets.uri import parse_uri


class RawClient:
    """Handshakes, then reads only when told to; a tiny receive buffer makes backpressure quick."""

    def __init__(self, address: str, path: str = "/ws", *, origin: str, cookie: str = ""):
        self.address = address
        self.protocol = ClientProtocol(parse_uri(f"ws://{address}{path}"), origin=Origin(origin))
        self.cookie = cookie
        self.sock: socket.socket | None = None
        self.frames: list[Frame] = []
        self.close_code: int | None = None

    async def connect(self) -> None:
        host, port = self.address.rsplit(":", 1)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (host, int(port)))
        self.sock = sock
        request = self.protocol.connect()
        if self.cookie:
            request.headers["Cookie"] = self.cookie
        self.protocol.send_request(request)
        await self.flush()
        while True:
            await self._read_some()
            if any(isinstance(e, Response) for e in self._events()):
                break

    async def read_all(self, timeout: float = 20.0) -> list[Frame]:
        """Read until the server closes; returns data frames (close code in ``close_code``)."""
        async with asyncio.timeout(timeout):
            while self.close_code is None:
                if not await self._read_some():
                    break
                self._events()
        return [f for f in self.frames if f.opcode in (Opcode.TEXT, Opcode.BINARY)]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def _events(self) -> list[object]:
        events = self.protocol.events_received()
        for event in events:
            if isinstance(event, Frame):
                self.frames.append(event)
                if event.opcode is Opcode.CLOSE and self.protocol.close_rcvd is not None:
                    self.close_code = self.protocol.close_rcvd.code
        return list(events)

    async def _read_some(self) -> bool:
        assert self.sock is not None
        data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        if not data:
            self.protocol.receive_eof()
            return False
        self.protocol.receive_data(data)
        await self.flush()
        return True

    async def flush(self) -> None:
        """Write out what the protocol has to send (e.g. after ``protocol.send_frame``)."""
        assert self.sock is not None
        for chunk in self.protocol.data_to_send():
            if chunk:
                await asyncio.get_running_loop().sock_sendall(self.sock, chunk)
