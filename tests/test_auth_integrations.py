"""The auth examples (examples/auth/) end to end: each app on a real uvicorn, a real login
through its own route, and real websocket clients.

Per integration: the logged-in socket is recognised, joins its user's groups and gets a group
and a direct message; a tampered or missing credential is refused with 403; header and query
tokens need no Origin, cookies do. JWT integrations: a token that expires closes its open
socket with 4401 within ``expiry_every``, whatever carried it, unless the client refreshed it
on the socket first. One server per integration.

For tests of short-lived tokens (expiry, refresh): decorate with ``@jwt_sites`` and take the
``site`` fixture; ``site.mint(user_id, lifetime)`` signs a token of that app for a user as its
login would, ``site.carriers(token)`` are the ways it rides on a socket to ``site.address``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi_users.authentication import JWTStrategy
from websockets.asyncio.client import connect

from examples.auth import fastapi_jwt, fastapi_users_app, quart_auth_app, starlette_auth
from examples.auth.common import DEMO_USERS

from .support.auth import (
    Carrier,
    Login,
    claims,
    closed_by_server,
    hello,
    refusal,
    until_marker,
)
from .support.servers import serve, serve_process

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: Seconds between the server's checks of open sockets' token expiry.
EXPIRY_EVERY = 0.2
#: Lifetime of the short-lived tokens (``exp`` is whole seconds: 2 to 3 s left when minted).
SHORT_LIFETIME = 3
#: What a loaded machine may add to a close that is due.
SLACK = 3.0


def same(name: str) -> str:
    return name


@dataclass(frozen=True)
class Integration:
    """How a client uses one example app. ``login(address, username)`` goes through the app's
    own route(s); ``display(username)`` is the name its socket reports. JWT apps:
    ``mint(user_id, lifetime)`` signs a token as the app's login does, and ``cookie_name``
    names the cookie that carries it."""

    login: Callable[[str, str], Awaitable[Login]]
    display: Callable[[str], str] = same
    mint: Callable[[str, int], Awaitable[str]] | None = None
    cookie_name: str = ""

    def carriers(self, token: str) -> tuple[Carrier, ...]:
        """Every way a token rides on a socket: the header, the query, the cookie."""
        cookie = Carrier("cookie", token, self.cookie_name)
        return Carrier("header", token), Carrier("query", token), cookie


@dataclass(frozen=True)
class Site:
    """An example app running at ``address``, and how its clients use it."""

    address: str
    client: Integration

    async def login(self, username: str) -> Login:
        return await self.client.login(self.address, username)

    def display(self, username: str) -> str:
        return self.client.display(username)

    async def mint(self, user_id: str, lifetime: int) -> str:
        """A token of this app for ``user_id`` that lapses in ``lifetime`` seconds."""
        assert self.client.mint is not None, "not a JWT app"
        return await self.client.mint(user_id, lifetime)

    def carriers(self, token: str) -> tuple[Carrier, ...]:
        return self.client.carriers(token)


def form(username: str, login_name: Callable[[str], str] = same) -> dict[str, str]:
    return {"username": login_name(username), "password": DEMO_USERS[username][0]}


def token_login(
    token_route: str, cookie_route: str, cookie_name: str, login_name: Callable[[str], str] = same
) -> Callable[[str, str], Awaitable[Login]]:
    """The OAuth2 password flow at ``token_route`` (a bearer token in JSON), and the same token
    as an HttpOnly cookie from ``cookie_route``."""

    async def login(address: str, username: str) -> Login:
        data = form(username, login_name)
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            answer = await http.post(token_route, data=data)
            assert answer.status_code == 200, answer.text
            assert answer.json()["token_type"] == "bearer"
            token = answer.json()["access_token"]
            page = await http.post(cookie_route, data=data)
            assert page.status_code == 204, page.text
            assert "httponly" in page.headers["set-cookie"].lower()
            cookie = page.cookies[cookie_name]
        carriers = Carrier("header", token), Carrier("query", token)
        return Login(claims(token)["sub"], (*carriers, Carrier("cookie", cookie, cookie_name)))

    return login


def cookie_login(route: str, cookie_name: str) -> Callable[[str, str], Awaitable[Login]]:
    """A login form that answers with a session cookie named ``cookie_name``."""

    async def login(address: str, username: str) -> Login:
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            answer = await http.post(route, data=form(username))
            assert answer.is_success, answer.text
            cookie = answer.cookies[cookie_name]
        return Login(username, (Carrier("cookie", cookie, cookie_name),))

    return login


async def tutorial_token(user_id: str, lifetime: int) -> str:
    return fastapi_jwt.create_access_token({"sub": user_id}, timedelta(seconds=lifetime))


async def fastapi_users_token(user_id: str, lifetime: int) -> str:
    strategy: Any = JWTStrategy(fastapi_users_app.SECRET, lifetime_seconds=lifetime)
    return str(await strategy.write_token(types.SimpleNamespace(id=user_id)))


USERS_COOKIE = "fastapiusersauth"  # fastapi-users' CookieTransport default
INTEGRATIONS = {
    "fastapi_jwt": Integration(
        token_login("/token", "/login", fastapi_jwt.COOKIE_NAME),
        mint=tutorial_token,
        cookie_name=fastapi_jwt.COOKIE_NAME,
    ),
    "fastapi_users_app": Integration(
        token_login(
            "/auth/jwt/login", "/auth/cookie/login", USERS_COOKIE, fastapi_users_app.demo_email
        ),
        display=fastapi_users_app.demo_email,
        mint=fastapi_users_token,
        cookie_name=USERS_COOKIE,
    ),
    "starlette_auth": Integration(cookie_login("/login", "session")),
    "quart_auth_app": Integration(cookie_login("/login", "QUART_AUTH")),
}


def database_url(tmp: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp / 'fastapi-users.db'}"


#: Each example app as the tests serve it in-process (token expiry checked often).
APPS: dict[str, Callable[[Path], Any]] = {
    "fastapi_jwt": lambda tmp: fastapi_jwt.create_app(expiry_every=EXPIRY_EVERY),
    "fastapi_users_app": lambda tmp: fastapi_users_app.create_app(
        database_url=database_url(tmp), expiry_every=EXPIRY_EVERY
    ),
    "starlette_auth": lambda tmp: starlette_auth.create_app(),
    "quart_auth_app": lambda tmp: quart_auth_app.create_app(cookie_secure=False),  # plain HTTP
}
every_site = pytest.mark.parametrize("site", list(APPS), indirect=True, scope="module")
jwt_sites = pytest.mark.parametrize(
    "site", ["fastapi_jwt", "fastapi_users_app"], indirect=True, scope="module"
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Site]:
    """The example app named by the test's parameter, served for the whole module."""
    name = request.param
    async with serve(APPS[name](tmp_path_factory.mktemp(name))) as address:
        yield Site(address, INTEGRATIONS[name])


@every_site
async def test_logged_in_socket_is_recognised_and_gets_group_and_direct_messages(
    site: Site,
) -> None:
    greg, amanda = await site.login("greg"), await site.login("amanda")
    async with contextlib.AsyncExitStack() as stack:
        inboxes = [await stack.enter_async_context(c.connect(site.address)) for c in greg.carriers]
        for ws in inboxes:
            assert await hello(ws) == {
                "type": "hello",
                "user": site.display("greg"),
                "id": greg.user_id,
                "groups": ["boys", "staff"],
            }
        sender = await stack.enter_async_context(amanda.carriers[0].connect(site.address))
        assert (await hello(sender))["user"] == site.display("amanda")
        await sender.send(json.dumps({"group": "staff", "text": "to the staff"}))
        await sender.send(json.dumps({"to": greg.user_id, "text": "to greg"}))
        await sender.send(json.dumps({"to": greg.user_id, "text": "END"}))
        amanda_name = site.display("amanda")
        for ws in inboxes:  # one socket per way greg's credential rides
            assert await until_marker(ws, "END") == {
                "group": [
                    {"type": "group", "group": "staff", "from": amanda_name, "text": "to the staff"}
                ],
                "direct": [{"type": "direct", "from": amanda_name, "text": "to greg"}],
            }


@every_site
async def test_tampered_or_missing_credentials_are_refused_with_403(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    greg = await site.login("greg")
    with caplog.at_level(logging.INFO, logger="asgi_groups"):
        for carrier in greg.carriers:
            status = await refusal(carrier.tampered().connect(site.address))
            assert status == 403, carrier.kind
        url = f"ws://{site.address}/ws"
        page: Any = f"http://{site.address}"
        assert await refusal(connect(url, origin=page)) == 403  # a page, not logged in
        assert await refusal(connect(url)) == 403  # a script with nothing at all
    refused = [r for r in caplog.records if r.name == "asgi_groups.refusals"]
    assert len(refused) == len(greg.carriers) + 2
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == []  # a refused visitor is an INFO line, not a warning per socket


@every_site
async def test_header_and_query_tokens_need_no_origin_cookies_do(site: Site) -> None:
    greg = await site.login("greg")
    for carrier in greg.carriers:
        if carrier.explicit:
            async with carrier.connect(site.address, origin=False) as ws:
                assert (await hello(ws))["id"] == greg.user_id
        else:
            assert await refusal(carrier.connect(site.address, origin=False)) == 403


@jwt_sites
async def test_an_expired_token_closes_its_socket_4401_unless_refreshed(site: Site) -> None:
    """Two sockets per way a token rides (header, query, cookie), all with a short-lived
    token: the ones that sent a fresh token of the same user (``ag.refresh``) are still served
    after it lapsed; the others are closed with 4401, not before it lapsed."""
    greg = await site.login("greg")
    token = await site.mint(greg.user_id, SHORT_LIFETIME)
    expires = float(claims(token)["exp"])
    fresh = await site.mint(greg.user_id, 60)
    async with contextlib.AsyncExitStack() as stack:
        lapsing, refreshed = {}, []
        for carrier in site.carriers(token):
            lapsing[carrier.kind] = await stack.enter_async_context(carrier.connect(site.address))
            refreshed.append(await stack.enter_async_context(carrier.connect(site.address)))
        for ws in [*lapsing.values(), *refreshed]:
            assert (await hello(ws))["id"] == greg.user_id
        for ws in refreshed:
            await ws.send(json.dumps({"type": "ag.refresh", "id": 1, "token": fresh}))
            answer = json.loads(await asyncio.wait_for(ws.recv(), SLACK))
            assert (answer["type"], answer["id"]) == ("ag.refreshed", 1)
            assert answer["expires_at"] == claims(fresh)["exp"]
        within = expires - time.time() + EXPIRY_EVERY + SLACK
        closes = await asyncio.gather(*(closed_by_server(ws, within) for ws in lapsing.values()))
        assert {kind: code for kind, (code, _) in zip(lapsing, closes, strict=True)} == {
            "header": 4401,
            "query": 4401,
            "cookie": 4401,
        }
        assert all(at >= expires for _, at in closes)  # not before the token lapsed
        await refreshed[0].send(json.dumps({"to": greg.user_id, "text": "END"}))
        for ws in refreshed:  # each still open, and nothing else came (no close, no error)
            assert await asyncio.wait_for(until_marker(ws, "END"), SLACK) == {}


async def test_each_example_serves_under_uvicorn_by_its_import_path(tmp_path: Path) -> None:
    """``uvicorn examples.auth.<name>:app``, as its docstring says: log in, get recognised."""
    with contextlib.ExitStack() as stack:
        env = {"DATABASE_URL": database_url(tmp_path)}
        running = {
            name: stack.enter_context(serve_process(f"examples.auth.{name}:app", env=env))[0]
            for name in INTEGRATIONS
        }
        for name, address in running.items():
            client = INTEGRATIONS[name]
            greg = await client.login(address, "greg")
            async with greg.carriers[0].connect(address) as ws:
                assert (await hello(ws))["user"] == client.display("greg"), name
