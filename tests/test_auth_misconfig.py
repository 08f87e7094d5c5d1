"""Misconfigurations speak: a session cookie nobody reads, a user object of another shape,
quart-auth's own cookie, and a CLI send that nobody receives."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from quart import Quart
from quart import websocket as quart_websocket
from quart_auth import AuthUser, QuartAuth, login_user
from starlette.applications import Starlette
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse
from starlette.routing import Route
from websockets.asyncio.client import connect

from asgi_groups import Registry, WsView
from asgi_groups.adapters import quart as quart_adapter
from asgi_groups.adapters.starlette import add_view, install
from asgi_groups.cli import build_parser
from asgi_groups.middleware import GroupsMiddleware
from asgi_groups.testing import WebSocketTestClient
from asgi_groups.types import Receive, Scope, Send
from asgi_groups.users import InMemoryUsers, SimpleUser

from .support.codecs import PlainCookie
from .support.redis import MakeRegistry, user
from .support.servers import serve

SECRET = "misconfig-secret"


class WhoAmI(WsView):
    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.accept()
        await self.send_json({"user": self.user.username, "id": str(self.user.id)})


async def test_install_reads_an_existing_session_middleware_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def login(request: HttpRequest) -> JSONResponse:
        request.session["user_id"] = 1
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/login", login, methods=["POST"])])
    app.add_middleware(SessionMiddleware, secret_key=SECRET)
    with caplog.at_level(logging.WARNING, logger="asgi_groups.adapters"):
        install(app, users=InMemoryUsers([SimpleUser(1, "greg")]))
    (record,) = [r for r in caplog.records if r.name == "asgi_groups.adapters"]
    assert "the app has SessionMiddleware but no sessions= was given" in record.getMessage()
    assert "sessions=StarletteSessionCookie(secret_key)" in record.getMessage()
    add_view(app, "/ws", WhoAmI)
    async with serve(app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            cookie = (await http.post("/login")).cookies["session"]
        origin: Any = f"http://{address}"
        headers = {"Cookie": f"session={cookie}"}
        async with connect(f"ws://{address}/ws", origin=origin, additional_headers=headers) as ws:
            assert json.loads(await ws.recv()) == {"user": "greg", "id": "1"}


def test_install_with_users_and_nothing_to_load_them_from_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="asgi_groups.adapters"):
        install(Starlette(), users=InMemoryUsers())
    (record,) = [r for r in caplog.records if r.name == "asgi_groups.adapters"]
    assert "every user will be anonymous" in record.getMessage()
    assert "Pass sessions=StarletteSessionCookie(secret_key)" in record.getMessage()


@dataclass
class FastapiUsersUser:
    """fastapi-users' ``User`` as it is: no ``username``, ``groups`` or ``is_authenticated``."""

    id: int
    email: str
    is_active: bool = True
    is_superuser: bool = False
    is_verified: bool = False


class Nameless:
    """Not a user at all."""


async def test_users_are_accepted_by_shape_and_a_shapeless_one_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[Any] = []

    class Recorder:
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            seen.append(scope["user"])
            await send({"type": "websocket.accept"})

    async def fastapi_users(session: Any) -> Any:
        return FastapiUsersUser(int(session["user_id"]), "greg@example.com", is_active=True)

    async def shapeless(session: Any) -> Any:
        return Nameless()

    async with Registry() as reg:
        app = GroupsMiddleware(Recorder(), reg, sessions=PlainCookie(), users=fastapi_users)
        async with WebSocketTestClient(app, cookies={"session": "3"}):
            pass
        (shaped,) = seen
        assert (shaped.id, shaped.username) == (3, "greg@example.com")
        assert shaped.is_authenticated is True
        assert shaped.groups == frozenset() and shaped.is_superuser is False

        broken = GroupsMiddleware(Recorder(), reg, sessions=PlainCookie(), users=shapeless)
        client = WebSocketTestClient(broken, cookies={"session": "3"})
        communicator = client._communicator
        await communicator.send_input({"type": "websocket.connect"})
        with caplog.at_level(logging.ERROR, logger="asgi_groups.middleware"):
            start = await communicator.receive_output(3)
            body = (await communicator.receive_output(3))["body"].decode()
    assert start["status"] == 503
    assert "Nameless has no 'id'" in body and "is_authenticated" in body
    assert any("Nameless has no 'id'" in r.getMessage() for r in caplog.records)


async def test_quart_auth_cookie_is_recognised() -> None:
    app = Quart(__name__)
    app.config["SECRET_KEY"] = SECRET
    app.config["QUART_AUTH_COOKIE_SECURE"] = False
    QuartAuth(app)

    @app.post("/login")
    async def login() -> dict[str, bool]:
        login_user(AuthUser("7"))
        return {"ok": True}

    @app.websocket("/ws")
    async def ws() -> None:
        async with quart_adapter.joined():
            who = quart_adapter.current_user()
            await quart_websocket.send(json.dumps({"user": who.username, "id": str(who.id)}))

    quart_adapter.install(app, users=InMemoryUsers([SimpleUser("7", "amy")], session_key="auth_id"))
    async with serve(app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            cookie = (await http.post("/login")).cookies["QUART_AUTH"]
        origin: Any = f"http://{address}"
        headers = {"Cookie": f"QUART_AUTH={cookie}"}
        async with connect(f"ws://{address}/ws", origin=origin, additional_headers=headers) as sock:
            assert json.loads(await sock.recv()) == {"user": "amy", "id": "7"}


async def test_cli_send_to_nobody_says_0_receivers_and_fails(
    make: MakeRegistry, redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = await make()
    conn, _inbox = await user(registry, 1)
    await registry.join(conn, "boys")

    async def send(*argv: str) -> int:
        args = build_parser().parse_args(["send", "--redis", redis_url, *argv])
        return int(await args.handler(args))

    assert await send("--prefix", prefix, "--group", "boys", "hi") == 0
    assert capsys.readouterr().err == ""
    assert await send("--prefix", prefix + "-wrong", "--group", "boys", "hi") == 1
    err = capsys.readouterr().err
    assert err.startswith("0 receivers: no process of the app listens on group 'boys'")
    assert "check --prefix" in err
    assert await send("--prefix", prefix + "-wrong", "--allow-none", "--broadcast", "hi") == 0
    assert "0 receivers" in capsys.readouterr().err
