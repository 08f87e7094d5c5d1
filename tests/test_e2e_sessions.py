"""A real Starlette site's session cookie identifies the user on the WebSocket (real uvicorn)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from asgi_groups import GroupsMiddleware, Registry, WsView
from asgi_groups.auth import SqlUserStore
from asgi_groups.sessions import StarletteSessionCookie
from asgi_groups.types import Receive, Scope, Send

from .support.servers import serve

SECRET = "s3cret-for-tests"


class WhoAmI(WsView):
    login_required = True

    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.accept()
        await self.send_json(
            {"user": self.user.username, "groups": sorted(self.connection.groups)}  # type: ignore[union-attr]
        )


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[str, SqlUserStore]]:
    store = SqlUserStore(f"sqlite+aiosqlite:///{tmp_path / 'users.sqlite3'}")
    await store.create_all()
    await store.create_user("greg", "Greg", groups=["boys"])

    async def login(request: HttpRequest) -> JSONResponse:
        body = await request.json()
        user = await store.authenticate(body["username"], body["password"])
        if user is None:
            return JSONResponse({"error": "bad credentials"}, status_code=401)
        request.session["user_id"] = user.id
        return JSONResponse({"success": f"Welcome back, {user.username}"})

    inner = Starlette(
        routes=[Route("/login", login, methods=["POST"]), WebSocketRoute("/ws", WhoAmI.as_asgi())]
    )
    app: Any = SessionMiddleware(inner, secret_key=SECRET)
    registry = Registry()
    app = GroupsMiddleware(app, registry, sessions=StarletteSessionCookie(SECRET), users=store)
    async with registry, serve(app) as address:
        yield address, store
    await store.close()


async def login_cookie(address: str) -> str:
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        response = await http.post("/login", json={"username": "greg", "password": "Greg"})
        assert response.status_code == 200
        return response.cookies["session"]


def ws(address: str, cookie: str) -> Any:
    return connect(
        f"ws://{address}/ws",
        origin=f"http://{address}",  # type: ignore[arg-type]
        additional_headers={"Cookie": f"session={cookie}"},
    )


async def test_valid_starlette_cookie_gives_user_and_store_groups(
    site: tuple[str, SqlUserStore],
) -> None:
    address, _ = site
    cookie = await login_cookie(address)
    async with ws(address, cookie) as conn:
        assert json.loads(await conn.recv()) == {"user": "greg", "groups": ["boys"]}


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda c: ("f" if c[0] != "f" else "g") + c[1:], id="tampered-payload"),
        pytest.param(lambda c: c[:-2] + ("A" if c[-2] != "A" else "B") + c[-1], id="tampered-sig"),
        pytest.param(lambda c: c[: len(c) // 2], id="truncated"),
        pytest.param(lambda c: "garbage", id="garbage"),
        pytest.param(
            lambda c: StarletteSessionCookie("another-key").encode({"user_id": 1}), id="wrong-key"
        ),
    ],
)
async def test_bad_cookie_is_anonymous_and_refused(
    site: tuple[str, SqlUserStore], mangle: Any, caplog: pytest.LogCaptureFixture
) -> None:
    address, _ = site
    bad = mangle(await login_cookie(address))
    with caplog.at_level(logging.DEBUG), pytest.raises(InvalidStatus) as refused:
        async with ws(address, bad):
            pass
    assert refused.value.response.status_code == 403
    server_side = [r.getMessage() for r in caplog.records if not r.name.startswith("websockets")]
    assert server_side  # the refusal was logged ...
    assert not [m for m in server_side if bad in m]  # ... but nothing of the cookie


async def test_expired_cookie_is_refused(site: tuple[str, SqlUserStore]) -> None:
    address, _ = site
    codec = StarletteSessionCookie(SECRET, max_age=14 * 24 * 3600)
    import itsdangerous

    old = itsdangerous.TimestampSigner(SECRET)
    old.get_timestamp = lambda: 1_000_000_000  # type: ignore[method-assign]  # in 2001
    import base64

    payload = base64.b64encode(json.dumps({"user_id": 1}).encode())
    expired = old.sign(payload).decode()
    assert codec.decode(expired) is None
    with pytest.raises(InvalidStatus) as refused:
        async with ws(address, expired):
            pass
    assert refused.value.response.status_code == 403


async def test_deactivated_user_is_refused(site: tuple[str, SqlUserStore]) -> None:
    address, store = site
    cookie = await login_cookie(address)
    await store.set_active("greg", False)
    with pytest.raises(InvalidStatus) as refused:
        async with ws(address, cookie):
            pass
    assert refused.value.response.status_code == 403
