"""Revocation across processes: two chat-app processes share a real Redis and a user database;
a user with a tab on each is logged out, disconnected by an admin, or deactivated."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from asgi_groups import GroupsMiddleware, InMemoryUsers, Registry, SimpleUser, WsView, codes
from asgi_groups.auth import SqlUserStore
from asgi_groups.backends import MemoryBackend
from asgi_groups.messaging import MessagingView, StaticDirectory
from asgi_groups.testing import WebSocketTestClient
from examples.chat.common import ChatConfig, prepare_store
from tests.support.redis import RedisServer

from .support.chat import Site, Tab
from .support.codecs import PlainCookie
from .support.servers import serve_process

SECRET = "revocation-suite-secret"
#: The chat apps' ``CHAT_REVALIDATE_SECONDS`` here.
REVALIDATE = 1.0
#: How long a test waits for a close before failing: a guard against a hang, not a promise
#: about speed (that would fail on a loaded machine for nothing).
CLOSE_GUARD = 30.0

APPS = ["examples.chat.fastapi_app", "examples.chat.starlette_app", "examples.chat.quart_app"]


@dataclass
class Cluster:
    """Two processes of one chat app on one Redis and one database."""

    a: Site
    b: Site
    db_url: str
    redis_url: str


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("revocation") / "seed.sqlite3"

    async def seed() -> None:
        async with SqlUserStore(f"sqlite+aiosqlite:///{path}") as store:
            await prepare_store(store)

    asyncio.run(seed())
    return path


@pytest.fixture(scope="module", params=APPS, ids=["fastapi", "starlette", "quart"])
def cluster(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    seeded_db: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    db = tmp_path_factory.mktemp("cluster") / "chat.sqlite3"
    db.write_bytes(seeded_db.read_bytes())
    db_url = f"sqlite+aiosqlite:///{db}"
    if not redis_server.running:
        redis_server.start()
    env = {
        "CHAT_DATABASE_URL": db_url,
        "CHAT_SECRET_KEY": SECRET,
        "CHAT_REDIS_URL": redis_server.url,
        "CHAT_REVALIDATE_SECONDS": str(REVALIDATE),
    }
    target = f"{request.param}:app"
    with serve_process(target, env=env) as (a, _), serve_process(target, env=env) as (b, _):
        yield Cluster(Site(a), Site(b), db_url, redis_server.url)


@pytest.fixture
async def tabs() -> AsyncIterator[list[Tab]]:
    opened: list[Tab] = []
    yield opened
    for tab in opened:
        await tab.close()


async def open_tab(site: Site, cookie: str, username: str) -> Tab:
    tab = Tab(await site.ws(cookie))
    assert (await tab.next({"hello"}))["user"] == username
    return tab


async def both_processes(cluster: Cluster, tabs: list[Tab], username: str) -> tuple[Tab, Tab]:
    """One tab of ``username`` on each process (logged in once, on process A)."""
    cookie = await cluster.a.cookie(username, fresh=True)
    first, second = (
        await open_tab(cluster.a, cookie, username),
        await open_tab(cluster.b, cookie, username),
    )
    tabs.extend((first, second))
    return first, second


async def closed_with(tab: Tab, timeout: float = CLOSE_GUARD) -> int:
    """Read ``tab`` until the server closes it; the close code."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                await tab.conn.recv()
            except ConnectionClosed as closed:
                assert closed.rcvd is not None, "closed without a close frame"
                return closed.rcvd.code


async def still_served(lisa: Tab, lisa2: Tab) -> None:
    """Lisa's tabs (one per process) still send and receive across processes."""
    await lisa.send({"type": "Direct", "user_name": "lisa", "text": "still here"})
    for tab in (lisa, lisa2):
        assert (await tab.next())["text"] == "still here"


async def test_logout_closes_every_tab_on_every_process(cluster: Cluster, tabs: list[Tab]) -> None:
    """Logging out on process A closes the user's tabs on A and B with 4401; another user's
    tabs on both processes keep working."""
    greg, greg2 = await both_processes(cluster, tabs, "greg")
    lisa, lisa2 = await both_processes(cluster, tabs, "lisa")
    cookie = await cluster.a.cookie("greg")
    async with httpx.AsyncClient(base_url=cluster.a.base) as http:
        response = await http.post("/logout", headers={"Cookie": cookie})
        assert response.status_code == 200
    codes_seen = await asyncio.gather(closed_with(greg), closed_with(greg2))
    assert codes_seen == [codes.UNAUTHORIZED, codes.UNAUTHORIZED]
    await still_served(lisa, lisa2)


async def test_disconnect_user_from_a_third_process(cluster: Cluster, tabs: list[Tab]) -> None:
    """``disconnect_user`` called from another process (an admin script) closes the user's tabs
    on both servers with 4401; nobody else is touched."""
    chuck, chuck2 = await both_processes(cluster, tabs, "chuck")
    lisa, lisa2 = await both_processes(cluster, tabs, "lisa")
    async with SqlUserStore(cluster.db_url) as store:
        user = await store.get_by_username("chuck")
    assert user is not None
    async with Registry(cluster.redis_url) as admin:
        await admin.disconnect_user(user.id)
    codes_seen = await asyncio.gather(closed_with(chuck), closed_with(chuck2))
    assert codes_seen == [codes.UNAUTHORIZED, codes.UNAUTHORIZED]
    await still_served(lisa, lisa2)


async def test_deactivated_user_closed_within_the_revalidation_interval(
    cluster: Cluster, tabs: list[Tab]
) -> None:
    """Deactivating a user in the database closes their tabs on both processes with 4401 (the
    revalidation loop notices; nothing else tells the processes), and refuses their next
    handshake."""
    mike, mike2 = await both_processes(cluster, tabs, "mike")
    lisa, lisa2 = await both_processes(cluster, tabs, "lisa")
    cookie = await cluster.a.cookie("mike")
    async with SqlUserStore(cluster.db_url) as store:
        await store.set_active("mike", False)
        try:
            codes_seen = await asyncio.gather(closed_with(mike), closed_with(mike2))
            assert codes_seen == [codes.UNAUTHORIZED, codes.UNAUTHORIZED]
            for site in (cluster.a, cluster.b):
                with pytest.raises(InvalidStatus) as refused:
                    async with site.ws(cookie):
                        pass
                assert refused.value.response.status_code == 403
            await still_served(lisa, lisa2)
        finally:
            await store.set_active("mike", True)


def test_revalidate_seconds_from_the_environment() -> None:
    """``CHAT_REVALIDATE_SECONDS`` sets the interval; empty means off; nonsense is refused."""
    assert ChatConfig.from_env({"CHAT_REVALIDATE_SECONDS": "2.5"}).revalidate_every == 2.5
    assert ChatConfig.from_env({"CHAT_REVALIDATE_SECONDS": ""}).revalidate_every is None
    assert ChatConfig.from_env({}).revalidate_every is None
    for bad in ("0", "-1", "soon", "nan", "inf"):
        with pytest.raises(ValueError, match="CHAT_REVALIDATE_SECONDS"):
            ChatConfig.from_env({"CHAT_REVALIDATE_SECONDS": bad})


class SlowDirectory(StaticDirectory):
    """A directory whose listing waits for a gate: the user can be revoked meanwhile."""

    def __init__(self, users: list[SimpleUser]) -> None:
        super().__init__(users)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def listing(self) -> tuple[list[str], list[str]]:
        self.entered.set()
        await self.gate.wait()
        return await super().listing()


async def test_revoked_while_connecting_closes_4401_without_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A user revoked while their socket is still in ``on_connect`` gets a clean 4401 close:
    no 1011, no error logged, and ``on_disconnect`` sees 4401."""
    people = [SimpleUser(1, "greg", frozenset({"boys"}))]
    directory = SlowDirectory(people)
    seen: list[int | None] = []

    class Recorded(MessagingView):
        async def on_disconnect(self, *args: Any) -> None:
            seen.append(self.close_code)
            await super().on_disconnect(*args)

    caplog.set_level(logging.ERROR, "asgi_groups")
    async with Registry() as registry:
        app = GroupsMiddleware(
            Recorded.as_asgi(directory=directory),
            registry,
            sessions=PlainCookie(),
            users=InMemoryUsers(people),
        )
        async with WebSocketTestClient(app, cookies={"session": "1"}) as ws:
            await asyncio.wait_for(directory.entered.wait(), 5)
            await registry.disconnect_user(1)
            directory.gate.set()
            assert await ws.receive_close() == codes.UNAUTHORIZED
        # leaving the block waited for the app to finish, so on_disconnect has run
    assert seen == [codes.UNAUTHORIZED]
    assert [r.getMessage() for r in caplog.records] == []


class GatedBackend(MemoryBackend):
    """Subscribing to one channel waits for a gate, as a Redis SUBSCRIBE waits for Redis."""

    def __init__(self, held: str) -> None:
        super().__init__()
        self.held = held
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def subscribe(self, channel: str) -> None:
        if channel == self.held:
            self.entered.set()
            await self.gate.wait()


async def test_revoked_while_joining_initial_groups_closes_4401_without_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A user revoked while ``accept`` is still joining the initial groups gets a clean 4401
    close; nothing is logged as an error and the registry is left empty."""
    seen: list[int | None] = []

    class TwoRooms(WsView):
        login_required = True
        groups = ["first", "second"]

        async def on_disconnect(self, *args: Any) -> None:
            seen.append(self.close_code)

    backend = GatedBackend("g:first")
    caplog.set_level(logging.ERROR, "asgi_groups")
    async with Registry(backend=backend) as registry:
        users = InMemoryUsers([SimpleUser(1, "greg")])
        app = GroupsMiddleware(TwoRooms.as_asgi(), registry, sessions=PlainCookie(), users=users)
        async with WebSocketTestClient(app, cookies={"session": "1"}) as ws:
            await asyncio.wait_for(backend.entered.wait(), 5)
            await registry.disconnect_user(1)
            backend.gate.set()
            assert await ws.receive_close() == codes.UNAUTHORIZED
        # leaving the block waited for the app to finish
        stats = registry.stats()
        assert (stats.connections, stats.groups) == (0, 0)
    assert seen == [codes.UNAUTHORIZED]
    assert [r.getMessage() for r in caplog.records] == []
