"""A client that goes away during the handshake, under a real uvicorn: a DEBUG line, no ERROR.

In a reconnect storm thousands of browsers drop the socket between sending the handshake and
the server's accept; each must cost the operator nothing worse than a DEBUG line without a
traceback, whether the app accepts, refuses, or the server raises on ``send``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from asgi_groups import GroupsMiddleware, InMemoryUsers, Registry, SimpleUser
from asgi_groups.messaging import MessagingView, StaticDirectory
from asgi_groups.middleware import reject
from asgi_groups.types import Message, Receive, Scope, Send

from .support.codecs import PlainCookie
from .support.servers import serve

PEOPLE = [SimpleUser(1, "greg", frozenset({"boys"}))]
#: uvicorn's WebSocket implementations that raise on ``send`` once the client is gone.
IMPLEMENTATIONS = ["websockets-sansio", "wsproto"]


class GoneFirst:
    """Hands ``app`` the socket only once the client has gone away (its disconnect arrived),
    so the app's accept or refusal meets a closed connection, as in a reconnect storm."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.served = 0
        self.done = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        gone: list[Message] = []
        while not gone or gone[-1]["type"] != "websocket.disconnect":
            gone.append(await receive())  # websocket.connect, then websocket.disconnect

        async def replay() -> Message:
            return gone[-1]

        try:
            await self.app(scope, replay, send)
        finally:
            self.served += 1
            self.done.set()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of the library and of uvicorn (whose loggers do not propagate), DEBUG up."""
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.DEBUG, "asgi_groups"):
            yield caplog
    finally:
        uvicorn_logger.removeHandler(caplog.handler)


async def handshake_and_leave(address: str, cookie: str, origin: str | None = None) -> None:
    """Send an opening handshake and close the TCP connection without waiting for the answer."""
    host, port = address.split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: {address}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        f"Origin: {origin or 'http://' + address}",
        f"Cookie: {cookie}",
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("ws", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("cookie", "origin"),
    [
        ("session=1", None),  # accepted: the view's accept meets the closed socket
        ("session=nobody", None),  # anonymous: the view's refusal (login required) does
        ("session=1", "http://evil.example"),  # the middleware's refusal (origin) does
    ],
    ids=["accept", "refuse-login", "refuse-origin"],
)
async def test_client_gone_during_the_handshake_logs_no_error(
    logs: pytest.LogCaptureFixture, ws: str, cookie: str, origin: str | None
) -> None:
    async with Registry() as registry:
        view = MessagingView.as_asgi(directory=StaticDirectory(PEOPLE))
        app = GoneFirst(
            GroupsMiddleware(view, registry, sessions=PlainCookie(), users=InMemoryUsers(PEOPLE))
        )
        async with serve(app, ws=ws, log_level="debug") as address:
            for _ in range(3):
                app.done.clear()
                await handshake_and_leave(address, cookie, origin)
                await asyncio.wait_for(app.done.wait(), 10)
        assert app.served == 3
        assert registry.stats().connections == 0
    loud = [r for r in logs.records if r.levelno >= logging.WARNING and "origin" not in r.msg]
    assert loud == [], [r.getMessage() for r in loud]
    assert [r for r in logs.records if r.exc_info] == []
    if cookie == "session=1" and origin is None:  # the accept itself met the closed socket
        lines = [r for r in logs.records if r.name == "asgi_groups.views"]
        assert len(lines) == 3
        assert all(
            r.levelno == logging.DEBUG and "client went away" in r.msg % r.args for r in lines
        )


async def test_a_refusal_to_a_client_already_gone_is_not_an_error(
    logs: pytest.LogCaptureFixture,
) -> None:
    """``reject`` (every refusal of the library) meets a server whose ``send`` raises."""

    async def gone(message: Message) -> None:
        raise ConnectionResetError("the client went away")

    for extensions in ({"websocket.http.response": {}}, {}):
        await reject({"type": "websocket", "extensions": extensions}, gone, 403, "Forbidden")
    lines = [r for r in logs.records if r.name == "asgi_groups.middleware"]
    assert [r.levelno for r in lines] == [logging.DEBUG, logging.DEBUG]
    assert not any(r.exc_info for r in lines)
