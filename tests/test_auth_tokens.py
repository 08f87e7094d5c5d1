"""Token authentication end to end: FastAPI's OAuth2/JWT tutorial shape on a real uvicorn.

A real login route signs a real JWT; the socket carries it in the ``Authorization`` header,
the query string, ``Sec-WebSocket-Protocol`` or a cookie. Time is an injectable clock: an
expired token closes its open socket with 4401 within the expiry check interval, unless the
client sends a fresh token of the same user on the socket first (``ag.refresh``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import jwt
import pytest
from fastapi import Depends, FastAPI, HTTPException, WebSocket
from fastapi.security import OAuth2PasswordRequestForm
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from asgi_groups import Registry, WsView
from asgi_groups.adapters.fastapi import add_view, current_user, install, joined
from asgi_groups.credentials import BearerToken, CookieToken, QueryToken, SubprotocolToken
from asgi_groups.tokens import JwtVerifier
from asgi_groups.types import Receive, Scope, Send

SECRET = "jwt-secret-for-tests-0123456789abcdef"
LIFETIME = 60.0
CHECK_EVERY = 0.05
USERS = {"greg": ("Greg", ["boys"]), "amanda": ("Amanda", ["girls"])}


class Clock:
    """Unix time that a test moves forward."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class WhoAmI(WsView):
    login_required = True

    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.accept()
        await self.send_json({"user": self.user.username, "groups": sorted(self.user.groups)})

    async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.send_json({"echo": self.kwargs.get("text")})


@dataclass
class Site:
    address: str
    registry: Registry
    clock: Clock

    async def login(self, username: str) -> str:
        async with httpx.AsyncClient(base_url=f"http://{self.address}") as http:
            form = {"username": username, "password": USERS[username][0]}
            response = await http.post("/token", data=form)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["token_type"] == "bearer"
            return str(body["access_token"])


def make_app(clock: Clock) -> tuple[FastAPI, Registry]:
    """The FastAPI tutorial's token route, and asgi_groups reading the same tokens."""
    app = FastAPI()

    @app.post("/token")
    async def token(form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> dict[str, str]:
        known = USERS.get(form.username)
        if known is None or known[0] != form.password:
            raise HTTPException(status_code=401, detail="Incorrect username or password")
        claims = {"sub": form.username, "groups": known[1], "exp": int(clock() + LIFETIME)}
        return {"access_token": jwt.encode(claims, SECRET, "HS256"), "token_type": "bearer"}

    verifier = JwtVerifier(SECRET, clock=clock)
    auth = [
        BearerToken(verifier),
        QueryToken(verifier),
        SubprotocolToken(verifier),
        CookieToken(verifier, cookie_name="access_token"),
    ]
    registry = install(app, auth=auth, clock=clock, expiry_every=CHECK_EVERY)
    add_view(app, "/ws", WhoAmI)

    @app.websocket("/endpoint")
    async def endpoint(websocket: WebSocket) -> None:  # a plain endpoint, no view
        async with joined(websocket) as conn:
            await conn.send({"user": current_user(websocket).username})
            async for _ in websocket.iter_text():
                pass

    return app, registry


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    from .support.servers import serve

    clock = Clock()
    app, registry = make_app(clock)
    async with serve(app) as address:
        yield Site(address, registry, clock)


async def hello(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), 3))  # type: ignore[no-any-return]


async def closed_with(ws: ClientConnection, timeout: float = 3.0) -> int | None:
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    return info.value.rcvd.code if info.value.rcvd else None


async def test_header_token_without_origin_is_recognised_and_joins_groups(site: Site) -> None:
    token = await site.login("greg")
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(f"ws://{site.address}/ws", additional_headers=headers) as ws:
        assert await hello(ws) == {"user": "greg", "groups": ["boys"]}
        await site.registry.send_group("boys", "to the boys")
        assert await asyncio.wait_for(ws.recv(), 3) == "to the boys"
        await site.registry.send_user("greg", "direct")
        assert await asyncio.wait_for(ws.recv(), 3) == "direct"


async def test_query_and_subprotocol_tokens_from_a_websocket_client(site: Site) -> None:
    token = await site.login("amanda")
    async with connect(f"ws://{site.address}/ws?access_token={token}") as ws:
        assert await hello(ws) == {"user": "amanda", "groups": ["girls"]}
    offered: Any = ["chat", f"bearer.{token}"]
    async with connect(f"ws://{site.address}/ws", subprotocols=offered) as ws:
        assert ws.subprotocol == "chat"  # the token is never echoed back
        assert (await hello(ws))["user"] == "amanda"


async def test_tampered_missing_and_expired_tokens_get_403(site: Site) -> None:
    token = await site.login("greg")
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-4]}AAAA"
    site.clock.now += LIFETIME + 1
    for headers in ({"Authorization": f"Bearer {forged}"}, {"Authorization": f"Bearer {token}"}):
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://{site.address}/ws", additional_headers=headers):
                pass
        assert info.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as info:  # no credential and no Origin
        async with connect(f"ws://{site.address}/ws"):
            pass
    assert info.value.response.status_code == 403


async def test_a_cookie_token_needs_a_same_site_origin(site: Site) -> None:
    token = await site.login("greg")
    cookie = {"Cookie": f"access_token={token}"}
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://{site.address}/ws", additional_headers=cookie):
            pass
    assert info.value.response.status_code == 403
    origin: Any = f"http://{site.address}"
    async with connect(f"ws://{site.address}/ws", additional_headers=cookie, origin=origin) as ws:
        assert (await hello(ws))["user"] == "greg"


@pytest.mark.parametrize("carrier", ["header", "query", "cookie"])
async def test_an_open_socket_is_closed_4401_when_its_token_expires(
    site: Site, carrier: str
) -> None:
    token = await site.login("greg")
    url = f"ws://{site.address}/ws"
    options: dict[str, Any] = {}
    if carrier == "header":
        options["additional_headers"] = {"Authorization": f"Bearer {token}"}
    elif carrier == "query":
        url += f"?access_token={token}"
    else:
        options["additional_headers"] = {"Cookie": f"access_token={token}"}
        options["origin"] = f"http://{site.address}"
    async with connect(url, **options) as ws:
        assert (await hello(ws))["user"] == "greg"
        site.clock.now += LIFETIME - 5
        await asyncio.sleep(CHECK_EVERY * 4)
        await site.registry.send_user("greg", "still open")
        assert await asyncio.wait_for(ws.recv(), 3) == "still open"
        site.clock.now += 6
        assert await closed_with(ws) == 4401  # within closed_with's bound, many checks long


def carried(site: Site, token: str, carrier: str) -> tuple[str, dict[str, Any]]:
    """The URL and ``connect`` options of a socket whose token rides in ``carrier``."""
    url = f"ws://{site.address}/ws"
    if carrier == "header":
        return url, {"additional_headers": {"Authorization": f"Bearer {token}"}}
    if carrier == "query":
        return f"{url}?access_token={token}", {}
    cookie = {"Cookie": f"access_token={token}"}
    return url, {"additional_headers": cookie, "origin": f"http://{site.address}"}


async def refresh(ws: ClientConnection, token: str, request_id: int) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "ag.refresh", "id": request_id, "token": token}))
    return await hello(ws)


@pytest.mark.parametrize("carrier", ["header", "query", "cookie"])
async def test_a_refresh_before_expiry_keeps_the_socket_open(site: Site, carrier: str) -> None:
    url, options = carried(site, await site.login("greg"), carrier)
    async with connect(url, **options) as ws:
        assert (await hello(ws))["user"] == "greg"
        site.clock.now += LIFETIME - 5
        fresh = await site.login("greg")  # what the page does before its token runs out
        answer = await refresh(ws, fresh, 7)
        expiry = int(site.clock() + LIFETIME)
        assert answer == {
            "type": "ag.refreshed",
            "id": 7,
            "expires_at": expiry,
            "expires_in": round(expiry - site.clock(), 3),
        }
        site.clock.now += 6  # past the first token's expiry
        await asyncio.sleep(CHECK_EVERY * 4)  # several expiry checks
        await site.registry.send_user("greg", "still open")
        assert await asyncio.wait_for(ws.recv(), 3) == "still open"
        await ws.send("app frame")  # the app sees its own frames, never the refresh
        assert await hello(ws) == {"echo": "app frame"}
        site.clock.now += LIFETIME
        assert await closed_with(ws) == 4401  # the fresh token's own expiry holds


async def test_a_bad_refresh_is_refused_and_the_old_expiry_stands(site: Site) -> None:
    url, options = carried(site, await site.login("greg"), "header")
    other = await site.login("amanda")
    async with connect(url, **options) as ws:
        assert (await hello(ws))["user"] == "greg"
        head, payload, signature = (await site.login("greg")).split(".")
        for request_id, token in enumerate([other, f"{head}.{payload}.{signature[:-4]}AAAA", 5]):
            answer = await refresh(ws, token, request_id)  # type: ignore[arg-type]
            assert (answer["type"], answer["id"], answer["error"]) == (
                "ag.error",
                request_id,
                "refresh_refused",
            )
        assert "another user" in (await refresh(ws, other, 9))["detail"]
        assert "id" not in await refresh(ws, other, ["not", "an", "id"])  # type: ignore[arg-type]
        site.clock.now += LIFETIME + 1
        assert await closed_with(ws) == 4401


async def test_a_plain_endpoint_is_closed_4401_when_its_token_expires_too(site: Site) -> None:
    """``joined()`` in an ``@app.websocket`` endpoint: the lapsed token closes it as it closes
    a view's socket."""
    token = await site.login("greg")
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(f"ws://{site.address}/endpoint", additional_headers=headers) as ws:
        assert await hello(ws) == {"user": "greg"}
        site.clock.now += LIFETIME + 1
        assert await closed_with(ws) == 4401
