"""A TCP proxy in the test's event loop that can cut, stall or refuse connections.

Between a client and a server, to make what a network does to a long-lived socket happen on
demand: :meth:`TcpProxy.stall` makes the current links go silent without closing anything
(a dead NAT entry, a laptop lid), :meth:`TcpProxy.drop` resets them, ``refusing`` closes new
connections at once, and ``target`` can point new connections at another server (a restart
on a new port, behind the same address).
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

__all__ = ["TcpProxy"]


class _Link:
    """One proxied connection: both sockets, and whether it still forwards."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.writers = (client, server)
        self.forwarding = asyncio.Event()
        self.forwarding.set()

    def abort(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


class TcpProxy:
    """``async with TcpProxy("127.0.0.1:8000") as proxy:`` listens on ``proxy.address``."""

    def __init__(self, target: str) -> None:
        #: ``host:port`` that new connections go to.
        self.target = target
        #: When true, new connections are closed as soon as they are accepted.
        self.refusing = False
        #: Connections accepted so far (refused ones included).
        self.accepted = 0
        self.address = ""
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()  # forwarding
        self._every: set[_Link] = set()  # stalled ones too, reset on exit
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for link in self._every:
            link.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def stall(self) -> None:
        """The current links stop forwarding, both ways, and stay open; new ones work."""
        for link in self._links:
            link.forwarding.clear()
        self._links.clear()

    def drop(self) -> None:
        """Reset the current links at once (no close frame, no FIN handshake)."""
        for link in self._links:
            link.abort()
        self._links.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refusing:
            writer.transport.abort()
            return
        host, _, port = self.target.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        self._every.add(link)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pump(link, src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(
        link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await reader.read(65536):
                await link.forwarding.wait()  # a stalled link holds this chunk for ever
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if link.forwarding.is_set():  # a stalled link stays silent, even on EOF
                with contextlib.suppress(Exception):
                    writer.close()
