"""The chat protocol over a Redis-backed registry while redis-server is killed and restarted
(real uvicorn, real clients): users get an error frame, never a dropped socket."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from asgi_groups import GroupsMiddleware, InMemoryUsers, Registry, SimpleUser
from asgi_groups.messaging import MessagingView, StaticDirectory
from tests.support.redis import RedisServer

from .support.codecs import PlainCookie
from .support.servers import serve
from .support.waiting import wait_until

PEOPLE = [
    SimpleUser(1, "greg", frozenset({"boys"})),
    SimpleUser(2, "chuck", frozenset({"boys"})),
    SimpleUser(3, "amanda", frozenset({"girls"})),
]
IDS = {u.username: u.id for u in PEOPLE}
FAST: dict[str, Any] = {
    "health_check_interval": 0.5,
    "socket_timeout": 1.0,
    "connect_timeout": 1.0,
    "reconnect_backoff": (0.02, 0.3),
}


@dataclass
class Site:
    address: str
    registry: Registry

    def ws(self, name: str) -> Any:
        return connect(
            f"ws://{self.address}/ws",
            origin=f"http://{self.address}",  # type: ignore[arg-type]
            additional_headers={"Cookie": f"session={IDS[name]}"},
        )

    @property
    def down(self) -> bool:
        return bool(self.registry.backend.down)  # type: ignore[attr-defined]


@pytest.fixture
async def site(redis_url: str, prefix: str) -> AsyncIterator[Site]:
    registry = Registry(redis_url, prefix=prefix, **FAST)
    view = MessagingView.as_asgi(directory=StaticDirectory(PEOPLE))
    app = GroupsMiddleware(view, registry, sessions=PlainCookie(), users=InMemoryUsers(PEOPLE))
    async with registry, serve(app) as address:
        yield Site(address, registry)


async def next_of(ws: ClientConnection, *kinds: str) -> dict[str, Any]:
    """The next frame of one of ``kinds`` (presence announcements are skipped otherwise)."""
    async with asyncio.timeout(5):
        while True:
            body: dict[str, Any] = json.loads(await ws.recv())
            if body["type"] in kinds:
                return body


async def test_chat_during_a_redis_outage_answers_unavailable_and_recovers(
    site: Site, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """While Redis is down each socket is told once that messages may be missed, every group,
    direct, broadcast and presence request gets one ``unavailable`` error frame and the
    socket stays open (no 1011, nothing logged as a view
    error); sockets open and close meanwhile; after the restart messages flow again."""
    caplog.set_level(logging.ERROR, "asgi_groups.views")
    async with site.ws("greg") as greg, site.ws("amanda") as amanda:
        await next_of(greg, "hello")
        await next_of(amanda, "hello")
        await greg.send(json.dumps({"type": "Direct", "user_name": "amanda", "text": "before"}))
        for ws in (amanda, greg):  # the recipient, and the sender's copy
            assert (await next_of(ws, "direct"))["text"] == "before"

        redis_server.kill()
        try:
            await wait_until(lambda: site.down)
            # told at once that messages may be missed; the socket stays open
            assert (await next_of(greg, "error"))["error"] == "missed"
            for message in (
                {"type": "Group", "group": "boys", "text": "x"},
                {"type": "Direct", "user_name": "amanda", "text": "x"},
                {"type": "BroadCast", "text": "x"},
                {"type": "Presence"},
            ):
                await greg.send(json.dumps(message))
                error = await next_of(greg, "error", "group", "direct", "broadcast")
                assert error["error"] == "unavailable", (message, error)
            async with site.ws("chuck") as chuck:  # connects and leaves during the outage
                await next_of(chuck, "hello")
            await amanda.close()
        finally:
            redis_server.start()
        await wait_until(lambda: not site.down, timeout=10)

        async with site.ws("chuck") as chuck:
            await next_of(chuck, "hello")
            await greg.send(json.dumps({"type": "Group", "group": "boys", "text": "after"}))
            for ws in (greg, chuck):
                assert (await next_of(ws, "group"))["text"] == "after"
            await greg.send(json.dumps({"type": "Presence"}))
            presence = await next_of(greg, "presence")
            assert presence["group"] == "boys" and "greg" in presence["users"]
    assert [r.getMessage() for r in caplog.records if r.name == "asgi_groups.views"] == []
