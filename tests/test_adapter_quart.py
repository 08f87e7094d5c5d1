"""The Quart adapter: asgi_app install, views, handler helpers; Quart's test client, uvicorn and
hypercorn with real clients."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from quart import Quart
from quart.testing import QuartClient
from quart.testing.connections import WebsocketDisconnectError, WebsocketResponseError
from websockets.exceptions import ConnectionClosed, InvalidStatus

from asgi_groups import Registry

from .adapter_apps.common import OLD_SECRET, http_cookie, recv_json, silent, tamper, ws
from .adapter_apps.quart_app import COOKIE_NAME, create_app
from .support.servers import serve, serve_process
from .support.waiting import wait_until

ORIGIN = {"Origin": "http://localhost"}
HTTP_RESPONSE = {"extensions": {"websocket.http.response": {}}}


def registry_of(app: Quart) -> Registry:
    registry = app.extensions["asgi_groups"]
    assert isinstance(registry, Registry)
    return registry


async def logged_in(app: Quart, user_id: int) -> QuartClient:
    client = app.test_client()
    response = await client.post("/login", json={"user_id": user_id})
    assert response.status_code == 200
    return client


def session_cookie(client: QuartClient) -> str:
    assert client.cookie_jar is not None
    (value,) = [c.value for c in client.cookie_jar if c.name == COOKIE_NAME]
    assert value is not None
    return f"{COOKIE_NAME}={value}"


def sock(client: QuartClient, path: str = "/ws", **kw: Any) -> AbstractAsyncContextManager[Any]:
    return client.websocket(path, headers={**ORIGIN, **kw.pop("headers", {})}, **kw)


@asynccontextmanager
async def serving(app: Quart) -> AsyncIterator[Quart]:
    async with app.test_app():
        yield app


@pytest.mark.parametrize("path", ["/ws", "/view"])
async def test_session_cookie_user_joins_groups_and_gets_group_messages(path: str) -> None:
    app = create_app()
    registry = registry_of(app)
    async with serving(app):
        greg, chuck, amanda = [await logged_in(app, n) for n in (1, 2, 3)]
        lobby = ["lobby"] if path == "/ws" else []
        async with sock(greg, path) as g, sock(chuck, path) as c, sock(amanda, path) as a:
            assert json.loads(await g.receive()) == {"hello": "greg", "groups": ["boys", *lobby]}
            assert json.loads(await c.receive()) == {"hello": "chuck", "groups": ["boys", *lobby]}
            assert json.loads(await a.receive()) == {"hello": "amanda", "groups": ["girls", *lobby]}
            await a.send(json.dumps({"group": "boys", "text": "hi boys"}))
            assert json.loads(await g.receive()) == {"from": "amanda", "text": "hi boys"}
            assert json.loads(await c.receive()) == {"from": "amanda", "text": "hi boys"}
            await registry.send_group("girls", "from outside")
            assert await a.receive() == "from outside"
            assert registry.stats().connections == 3
        # the client went away: the handler was cancelled and the connections left
        await wait_until(lambda: registry.stats().connections == 0)


async def test_spawned_task_with_copied_websocket_context() -> None:
    app = create_app()
    async with serving(app):
        greg = await logged_in(app, 1)
        async with sock(greg) as g:
            await g.receive()
            await g.send(json.dumps({"later": True}))
            assert json.loads(await g.receive()) == {"later": "greg"}


@pytest.mark.parametrize("path", ["/ws", "/view"])
async def test_tampered_or_missing_cookie_is_anonymous_and_refused_403(path: str) -> None:
    app = create_app()
    async with serving(app):
        cookie = session_cookie(await logged_in(app, 1))
        for headers in ({"Cookie": tamper(cookie)}, {}):
            client = app.test_client()
            async with sock(client, path, headers=headers, scope_base=HTTP_RESPONSE) as refused:
                with pytest.raises(WebsocketResponseError) as error:
                    await refused.receive()
            assert error.value.response.status_code == 403
        async with sock(app.test_client(), path, headers={"Cookie": cookie}) as g:
            assert json.loads(await g.receive())["hello"] == "greg"


async def test_keys_cookie_name_and_fallbacks_come_from_app_config() -> None:
    # a cookie Quart itself signed with the previous SECRET_KEY still logs the user in
    old = create_app()
    old.config["SECRET_KEY"] = OLD_SECRET
    old_cookie = session_cookie(await logged_in(old, 3))
    app = create_app()
    async with serving(app), sock(app.test_client(), headers={"Cookie": old_cookie}) as a:
        assert json.loads(await a.receive())["hello"] == "amanda"
    # under another cookie name it is not the session
    renamed = old_cookie.replace(COOKIE_NAME, "session", 1)
    async with (
        serving(app),
        sock(app.test_client(), headers={"Cookie": renamed}, scope_base=HTTP_RESPONSE) as r,
    ):
        with pytest.raises(WebsocketResponseError):
            await r.receive()


async def test_logout_closes_the_users_sockets_4401() -> None:
    app = create_app()
    registry = registry_of(app)
    async with serving(app):
        greg, chuck = await logged_in(app, 1), await logged_in(app, 2)
        async with sock(greg) as g1, sock(greg, "/view") as g2, sock(chuck) as c:
            for s in (g1, g2, c):
                await s.receive()
            await greg.post("/logout")
            for s in (g1, g2):
                with pytest.raises(WebsocketDisconnectError) as closed:
                    await s.receive()
                assert closed.value.args[0] == 4401
            await c.send(json.dumps({"group": "boys", "text": "still here"}))
            assert json.loads(await c.receive()) == {"from": "chuck", "text": "still here"}
            assert [conn.user_id for conn in registry.connections()] == ["2"]


async def test_registry_runs_around_the_apps_own_before_and_after_serving() -> None:
    app = create_app()
    registry, events = registry_of(app), app.config["EVENTS"]
    async with app.test_app():
        assert events.log == ["startup (registry up)"] and registry.started
    assert events.log == ["startup (registry up)", "shutdown (registry up)"]
    assert not registry.started


# -- real servers, real clients ------------------------------------------------------------------


async def exercise(address: str) -> None:
    """Group messages, a spawned task, a view, and the refusals, over real sockets."""
    greg = await http_cookie(address, 1, COOKIE_NAME)
    chuck = await http_cookie(address, 2, COOKIE_NAME)
    amanda = await http_cookie(address, 3, COOKIE_NAME)
    async with (
        ws(address, "/ws", greg) as g,
        ws(address, "/view", chuck) as c,
        ws(address, "/ws", amanda) as a,
    ):
        assert await recv_json(g) == {"hello": "greg", "groups": ["boys", "lobby"]}
        assert await recv_json(c) == {"hello": "chuck", "groups": ["boys"]}
        assert await recv_json(a) == {"hello": "amanda", "groups": ["girls", "lobby"]}
        await a.send(json.dumps({"group": "boys", "text": "hi boys"}))
        for s in (g, c):
            assert await recv_json(s) == {"from": "amanda", "text": "hi boys"}
        await c.send(json.dumps({"group": "lobby", "text": "lobby call"}))
        for s in (g, a):
            assert await recv_json(s) == {"from": "chuck", "text": "lobby call"}
        assert await silent(c)
        await g.send(json.dumps({"later": True}))
        assert await recv_json(g) == {"later": "greg"}
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            await http.post("/logout", headers={"cookie": greg})
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(g)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    for path in ("/ws", "/view"):
        with pytest.raises(InvalidStatus) as refused:
            async with ws(address, path, tamper(chuck)):
                pass
        assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as refused:
            async with ws(address, path, chuck, origin="http://evil.example"):
                pass
        assert refused.value.response.status_code == 403


async def test_uvicorn() -> None:
    app = create_app()
    registry, events = registry_of(app), app.config["EVENTS"]
    async with serve(app) as address:
        assert events.log == ["startup (registry up)"] and registry.started
        await exercise(address)
        await wait_until(lambda: registry.stats().connections == 0)
    assert events.log == ["startup (registry up)", "shutdown (registry up)"]
    assert not registry.started


async def test_hypercorn() -> None:
    with serve_process("tests.adapter_apps.quart_app:app", server="hypercorn") as (address, _):
        await exercise(address)
