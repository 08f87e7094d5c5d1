"""A client that stops reading: a raw socket with a tiny receive buffer that never reads again.

It handshakes by hand (HTTP upgrade; for Socket.IO also the namespace connect), asks the server
to fill it with large messages until the server's side of the socket is full, then sits there:
from then on every write the server makes to it has to wait, queue or be dropped.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

from . import protocol
from .procstat import tcp_send_queue


def client_frame(text: str) -> bytes:
    """A masked text frame (mask key 0: valid, and the payload needs no XOR)."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return header + b"\0\0\0\0" + payload


def server_frames(buffer: bytearray) -> list[bytes]:
    """Pop every complete unmasked server frame from ``buffer``; returns their payloads."""
    out: list[bytes] = []
    while len(buffer) >= 2:
        n, pos = buffer[1] & 0x7F, 2
        if n == 126:
            if len(buffer) < 4:
                break
            n, pos = struct.unpack_from("!H", buffer, 2)[0], 4
        elif n == 127:
            if len(buffer) < 10:
                break
            n, pos = struct.unpack_from("!Q", buffer, 2)[0], 10
        if len(buffer) < pos + n:
            break
        out.append(bytes(buffer[pos : pos + n]))
        del buffer[: pos + n]
    return out


class SlowReader:
    """One stalled client. ``open`` → ``stall`` → (the measured burst) → ``close``."""

    def __init__(self, host: str, port: int, path: str, origin: str, dialect: str) -> None:
        self.host, self.port, self.path = host, port, path
        self.origin = origin
        self.dialect = dialect
        self.sock: socket.socket | None = None
        self.requested = 0

    async def open(self, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.setblocking(False)
        self.sock = sock
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (self.host, self.port))
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nOrigin: {self.origin}\r\n\r\n"
            )
            await loop.sock_sendall(sock, request.encode())
            buffer = bytearray()
            while b"\r\n\r\n" not in buffer:
                buffer += await self._recv()
            head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"slow reader refused: {head[:60]!r}")
            if self.dialect == "sio":
                await self._sio_connect(bytearray(rest))

    async def _recv(self) -> bytes:
        assert self.sock is not None
        data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        if not data:
            raise ConnectionError("server closed the slow reader during its handshake")
        return data

    async def _sio_connect(self, buffer: bytearray) -> None:
        sent = False
        while True:
            for payload in server_frames(buffer):
                if payload.startswith(b"0{") and not sent:
                    await self.send("40", raw=True)
                    sent = True
                elif payload.startswith(b"40"):
                    return
            buffer += await self._recv()

    async def send(self, text: str, *, raw: bool = False) -> None:
        """Send a command (wrapped as a Socket.IO trigger event unless ``raw``)."""
        assert self.sock is not None
        if self.dialect == "sio" and not raw:
            text = f'42["{protocol.SIO_TRIGGER}","{text}"]'
        await asyncio.get_running_loop().sock_sendall(self.sock, client_frame(text))

    def server_queue(self) -> int | None:
        assert self.sock is not None
        return tcp_send_queue(self.port, self.sock.getsockname()[1])

    async def stall(self, step: int = 256 * 1024, limit: int = 32 * 1024 * 1024) -> dict[str, int]:
        """Ask for ``step`` bytes at a time until the server's socket queue stops growing.

        Then one more step, so the server's own write buffer is full too: its next write to
        this client has to wait (or be queued) instead of reaching the kernel.
        """
        previous = -1
        while self.requested < limit:
            await self.send(protocol.fill(step))
            self.requested += step
            await asyncio.sleep(0.15)
            queued = self.server_queue()
            if queued is None:  # cannot see the socket: fall back to a generous fixed amount
                if self.requested >= 4 * 1024 * 1024:
                    break
                continue
            if previous >= 0 and queued - previous < 16 * 1024:
                break
            previous = queued
        await self.send(protocol.fill(step))
        self.requested += step
        await asyncio.sleep(0.15)
        return {"requested": self.requested, "server_queue": self.server_queue() or 0}

    def close(self) -> None:
        """Reset the connection (no lingering close handshake with a peer that cannot read)."""
        if self.sock is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
            self.sock = None
