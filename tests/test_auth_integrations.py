"""The auth examples (examples/auth/) end to end: each app on a real uvicorn, a real login
through its own route, and real websocket clients.

Per integration: the logged-in socket is recognised, joins its user's groups and gets a group
and a direct message; a tampered or missing credential is refused with 403; header and query
tokens need no Origin, cookies do. JWT integrations: a token that expires closes its open
socket with 4401 within ``expiry_every``, whatever carried it. One server per integration.

``Site.mint(user_id, lifetime)`` signs a token of that app for a user, as its login would: for
tests of short-lived tokens (expiry, refresh) on the running ``Site.address``.
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
from .support.servers import serve

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: Seconds between the server's checks of open sockets' token expiry.
EXPIRY_EVERY = 0.2
#: Lifetime of the short-lived tokens (``exp`` is whole seconds: 2 to 3 s left when minted).
SHORT_LIFETIME = 3
#: What a loaded machine may add to a close that is due.
SLACK = 3.0


@dataclass
class Site:
    """One example app, running. ``login(username)`` goes through the app's own route(s);
    ``mint(user_id, lifetime)`` (JWT apps) signs a token as the app does, ``carriers(token)``
    are the ways that token can ride on a socket; ``display(username)`` is the name the
    socket reports."""

    address: str
    login: Callable[[str], Awaitable[Login]]
    display: Callable[[str], str]
    mint: Callable[[str, int], Awaitable[str]] | None = None
    carriers: Callable[[str], tuple[Carrier, ...]] | None = None


def form(username: str, login_name: str | None = None) -> dict[str, str]:
    return {"username": login_name or username, "password": DEMO_USERS[username][0]}


def token_carriers(cookie_name: str) -> Callable[[str], tuple[Carrier, ...]]:
    def carriers(token: str) -> tuple[Carrier, ...]:
        cookie = Carrier("cookie", token, cookie_name)
        return Carrier("header", token), Carrier("query", token), cookie

    return carriers


@contextlib.asynccontextmanager
async def fastapi_jwt_site(tmp: Path) -> AsyncIterator[Site]:
    app = fastapi_jwt.create_app(expiry_every=EXPIRY_EVERY)
    carriers = token_carriers(fastapi_jwt.COOKIE_NAME)
    async with serve(app) as address:

        async def login(username: str) -> Login:
            async with httpx.AsyncClient(base_url=f"http://{address}") as http:
                answer = await http.post("/token", data=form(username))
                assert answer.status_code == 200, answer.text
                assert answer.json()["token_type"] == "bearer"
                token = answer.json()["access_token"]
                page = await http.post("/login", data=form(username))
                assert page.status_code == 204, page.text
                assert "httponly" in page.headers["set-cookie"].lower()
                cookie = page.cookies[fastapi_jwt.COOKIE_NAME]
            header, query, _ = carriers(token)
            return Login(claims(token)["sub"], (header, query, *carriers(cookie)[2:]))

        async def mint(user_id: str, lifetime: int) -> str:
            return fastapi_jwt.create_access_token({"sub": user_id}, timedelta(seconds=lifetime))

        yield Site(address, login, lambda name: name, mint, carriers)


@contextlib.asynccontextmanager
async def fastapi_users_site(tmp: Path) -> AsyncIterator[Site]:
    database = f"sqlite+aiosqlite:///{tmp / 'fastapi-users.db'}"
    app = fastapi_users_app.create_app(database_url=database, expiry_every=EXPIRY_EVERY)
    carriers = token_carriers("fastapiusersauth")
    async with serve(app) as address:

        async def login(username: str) -> Login:
            email = fastapi_users_app.demo_email(username)
            async with httpx.AsyncClient(base_url=f"http://{address}") as http:
                answer = await http.post("/auth/jwt/login", data=form(username, email))
                assert answer.status_code == 200, answer.text
                token = answer.json()["access_token"]
                page = await http.post("/auth/cookie/login", data=form(username, email))
                assert page.status_code == 204, page.text
                assert "httponly" in page.headers["set-cookie"].lower()
                cookie = page.cookies["fastapiusersauth"]
            header, query, _ = carriers(token)
            return Login(claims(token)["sub"], (header, query, *carriers(cookie)[2:]))

        async def mint(user_id: str, lifetime: int) -> str:
            strategy: Any = JWTStrategy(fastapi_users_app.SECRET, lifetime_seconds=lifetime)
            return str(await strategy.write_token(types.SimpleNamespace(id=user_id)))

        yield Site(address, login, fastapi_users_app.demo_email, mint, carriers)


def cookie_login(route: str, cookie_name: str) -> Callable[[str, str], Awaitable[Login]]:
    """A login form that answers with a session cookie named ``cookie_name``."""

    async def login(address: str, username: str) -> Login:
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            answer = await http.post(route, data=form(username))
            assert answer.is_success, answer.text
            cookie = answer.cookies[cookie_name]
        return Login(username, (Carrier("cookie", cookie, cookie_name),))

    return login


@contextlib.asynccontextmanager
async def starlette_auth_site(tmp: Path) -> AsyncIterator[Site]:
    login = cookie_login("/login", "session")
    async with serve(starlette_auth.create_app()) as address:
        yield Site(address, lambda name: login(address, name), lambda name: name)


@contextlib.asynccontextmanager
async def quart_auth_site(tmp: Path) -> AsyncIterator[Site]:
    login = cookie_login("/login", "QUART_AUTH")
    async with serve(quart_auth_app.create_app(cookie_secure=False)) as address:
        yield Site(address, lambda name: login(address, name), lambda name: name)


SITES = {
    "fastapi_jwt": fastapi_jwt_site,
    "fastapi_users": fastapi_users_site,
    "starlette_auth": starlette_auth_site,
    "quart_auth": quart_auth_site,
}
every_site = pytest.mark.parametrize("site", list(SITES), indirect=True, scope="module")
jwt_sites = pytest.mark.parametrize(
    "site", ["fastapi_jwt", "fastapi_users"], indirect=True, scope="module"
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Site]:
    """The example app named by the test's parameter, served for the whole module."""
    async with SITES[request.param](tmp_path_factory.mktemp(request.param)) as running:
        yield running


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
async def test_an_expired_token_closes_its_open_socket_with_4401(site: Site) -> None:
    assert site.mint is not None and site.carriers is not None
    greg = await site.login("greg")
    token = await site.mint(greg.user_id, SHORT_LIFETIME)
    expires = float(claims(token)["exp"])
    async with contextlib.AsyncExitStack() as stack:
        sockets = {
            carrier.kind: await stack.enter_async_context(carrier.connect(site.address))
            for carrier in site.carriers(token)
        }
        for ws in sockets.values():
            assert (await hello(ws))["id"] == greg.user_id
        within = expires - time.time() + EXPIRY_EVERY + SLACK
        closes = await asyncio.gather(*(closed_by_server(ws, within) for ws in sockets.values()))
    assert {kind: code for kind, (code, _) in zip(sockets, closes, strict=True)} == {
        "header": 4401,
        "query": 4401,
        "cookie": 4401,
    }
    assert all(at >= expires for _, at in closes)  # not before the token lapsed
