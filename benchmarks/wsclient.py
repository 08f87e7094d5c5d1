"""The load generator's WebSocket connections: picows clients that only count what arrives.

Three dialects: ``ws`` (plain text frames), ``sio`` (Engine.IO v4 / Socket.IO v5 over a
WebSocket: answer the open packet with a namespace connect, pong the server's pings, count
``42[...]`` event packets) and ``ag`` (the recoverable protocol: a hello first, then count the
``ag.message`` envelopes).
"""

from __future__ import annotations

import asyncio

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from . import protocol
from .tally import Tally, monotonic_ns

TEXT = WSMsgType.TEXT
#: ``42["m","`` — the prefix of a Socket.IO event packet carrying one benchmark message.
SIO_EVENT_PREFIX = b'42["' + protocol.SIO_MESSAGE.encode() + b'","'
#: The first frame of a recoverable-protocol client that has no position to resume from.
HELLO = b'{"type":"ag.hello"}'


class PlainConn(WSListener):
    """A plain WebSocket client: every text frame is a delivery."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.transport: WSTransport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.ready.set_result(None)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is TEXT:
            tally = self.tally
            if tally.plain:  # the hot path of a burst: count, no payload copy
                tally.received += 1
                tally.frames += 1
                tally.last_ns = monotonic_ns()
                if tally.received == tally.expected:
                    tally.done.set()
            else:
                tally.add(frame.get_payload_as_bytes())

    def trigger(self, text: str) -> None:
        assert self.transport is not None
        self.transport.send(TEXT, text.encode())


class SioConn(PlainConn):
    """A Socket.IO client: ready once the server acknowledged the namespace connect."""

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not TEXT:
            return
        data = frame.get_payload_as_bytes()
        if data.startswith(SIO_EVENT_PREFIX):
            self.tally.add(data[len(SIO_EVENT_PREFIX) : -2])
        elif data == b"2":
            transport.send(TEXT, b"3")
        elif data.startswith(b"0{"):
            transport.send(TEXT, b"40")
        elif data.startswith(b"40") and not self.ready.done():
            self.ready.set_result(None)

    def trigger(self, text: str) -> None:
        assert self.transport is not None
        packet = f'42["{protocol.SIO_TRIGGER}","{text}"]'
        self.transport.send(TEXT, packet.encode())


class HelloConn(PlainConn):
    """A client of the recoverable protocol (docs/PROTOCOL.md): says ``ag.hello`` (no positions)
    on connect and is ready on the welcome; after it every text frame (an ``ag.message``
    envelope) is a delivery."""

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        transport.send(TEXT, HELLO)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.ready.done():
            super().on_ws_frame(transport, frame)
        elif frame.msg_type is TEXT:  # the welcome: nothing is delivered before it
            self.ready.set_result(None)


#: Connection class per dialect: ``ws`` (plain, the default), ``sio``, ``ag`` (recoverable).
DIALECTS: dict[str, type[PlainConn]] = {"sio": SioConn, "ag": HelloConn}


class Pool:
    """The open client connections of one load generator; the first one sends the triggers."""

    def __init__(self, url: str, origin: str, dialect: str, tally: Tally) -> None:
        self.url = url
        self.origin = origin
        self.kind: type[PlainConn] = DIALECTS.get(dialect, PlainConn)
        self.tally = tally
        self.conns: list[PlainConn] = []

    def __len__(self) -> int:
        return len(self.conns)

    async def _open(self, timeout: float) -> PlainConn:
        async with asyncio.timeout(timeout):
            _transport, conn = await ws_connect(
                lambda: self.kind(self.tally),
                self.url,
                extra_headers={"Origin": self.origin},
                read_buffer_init_size=4096,
                websocket_handshake_timeout=timeout,
            )
            await conn.ready
        return conn

    async def resize(self, n: int, batch: int = 100, timeout: float = 30.0) -> int:
        """Open or close connections until exactly ``n`` are open; returns handshakes retried.

        Opens (and closes) ``batch`` at a time. A failed handshake is retried (up to ``n // 100
        + 3`` in all, so a server that sheds load under a connect storm still gets its
        clients); more failures than that raise.
        """
        while len(self.conns) > n:
            for _ in range(min(batch, len(self.conns) - n)):
                self.close(self.conns.pop())
            await asyncio.sleep(0.02)  # paced, like the opening: no disconnect storm
        retries = 0
        while len(self.conns) < n:
            size = min(batch, n - len(self.conns))
            results = await asyncio.gather(
                *(self._open(timeout) for _ in range(size)), return_exceptions=True
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            self.conns.extend(r for r in results if isinstance(r, PlainConn))
            retries += len(errors)
            if retries > n // 100 + 3:
                raise RuntimeError(
                    f"{retries} handshakes failed ({len(self.conns)} of {n} open): {errors[0]!r}"
                )
            if errors:
                await asyncio.sleep(0.2)
        return retries

    @staticmethod
    def close(conn: PlainConn) -> None:
        if conn.transport is not None:
            conn.transport.send_close(WSCloseCode.OK)
            conn.transport.disconnect()

    def close_all(self) -> None:
        while self.conns:
            self.close(self.conns.pop())

    def trigger(self, text: str) -> None:
        self.conns[0].trigger(text)
