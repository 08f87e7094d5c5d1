"""The Python client with a token: in the handshake, refreshed in place, replaced after a 4401.

A real uvicorn serves a ``RecoverableView`` behind ``GroupsMiddleware`` that reads JWTs from
the ``Authorization`` header, the query string and ``Sec-WebSocket-Protocol``. The server's
clock runs with real time plus an offset that a test moves forward; the expiry check runs only
when a test calls it (``revalidator.expire()``), so that no test waits for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest

from asgi_groups import GroupsMiddleware, HistoryLimits, RecoverableView, Registry
from asgi_groups.client import (
    Client,
    ClientClosed,
    Message,
    Refreshed,
    RefreshError,
    TokenPlacement,
)
from asgi_groups.credentials import Authenticator, BearerToken, QueryToken, SubprotocolToken
from asgi_groups.revalidation import Revalidator
from asgi_groups.tokens import JwtVerifier

from .support.servers import serve
from .test_client import FAST as CLIENT_FAST

SECRET = "jwt-secret-for-client-tests-0123456789"
#: A hang guard only: nothing here waits for a timeout to expire.
GUARD = 5.0
FAST: dict[str, Any] = {**CLIENT_FAST, "refresh_timeout": 2.0}
CARRIERS: list[TokenPlacement] = ["header", "query", "subprotocol"]


class Clock:
    """Unix time running with real time, plus an offset a test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Room(RecoverableView):
    login_required = True
    groups = ["lobby"]


@dataclass
class Site:
    url: str
    registry: Registry
    clock: Clock
    revalidator: Revalidator

    def mint(self, user: str, lifetime: float) -> str:
        claims = {"sub": user, "exp": self.clock() + lifetime}
        return jwt.encode(claims, SECRET, "HS256")

    def expire(self) -> int:
        """Run the server's expiry check now: how many sockets it closed (4401)."""
        return self.revalidator.expire()


class Tokens:
    """The client's ``token`` option: logs in as ``users`` in turn (the last one from then on),
    the first token living ``first`` seconds and the next ones ``then``."""

    def __init__(self, site: Site, *users: str, first: float = 60.0, then: float = 60.0) -> None:
        self.site = site
        self.users = list(users or ["greg"])
        self.first = first
        self.then = then
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        user = self.users[min(self.calls, len(self.users)) - 1]
        return self.site.mint(user, self.first if self.calls == 1 else self.then)


class Outcomes:
    """``on_refresh`` that lets a test wait for the next automatic refresh's outcome."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Refreshed | Exception] = asyncio.Queue()

    def __call__(self, outcome: Refreshed | Exception) -> None:
        self.queue.put_nowait(outcome)

    async def next(self) -> Refreshed | Exception:
        async with asyncio.timeout(GUARD):
            return await self.queue.get()


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    clock = Clock()
    registry = Registry(history=HistoryLimits(size=100, ttl=600, max_replay=100))
    verifier = JwtVerifier(SECRET, clock=clock)
    auth: list[Authenticator] = [
        BearerToken(verifier),
        QueryToken(verifier),
        SubprotocolToken(verifier),
    ]
    app = GroupsMiddleware(Room.as_asgi(), registry, auth=auth, clock=clock, expiry_every=3600)
    assert app.revalidator is not None
    async with registry, serve(app) as address:
        yield Site(f"ws://{address}/ws", registry, clock, app.revalidator)


async def said(site: Site, client: Client, text: str) -> Message:
    """Say ``text`` to the lobby; what the client received."""
    await site.registry.send_group("lobby", text)
    async with asyncio.timeout(GUARD):
        return await client.recv()


async def stopped(client: Client) -> ClientClosed:
    """Read until the client stops; what stopped it."""
    with pytest.raises(ClientClosed) as info:
        async with asyncio.timeout(GUARD):
            while True:
                await client.recv()
    return info.value


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_the_client_refreshes_before_its_token_lapses_and_stays(
    site: Site, carrier: TokenPlacement
) -> None:
    tokens = Tokens(site, first=1.0, then=60.0)  # refreshed after half a second
    outcomes = Outcomes()
    client = Client(site.url, token=tokens, token_in=carrier, on_refresh=outcomes, **FAST)
    async with client:
        assert 0 < client.welcome["expires_in"] <= 1.0  # type: ignore[index]
        assert (await said(site, client, "before")).data == "before"
        refreshed = await outcomes.next()
        assert isinstance(refreshed, Refreshed)
        assert refreshed.expires_in is not None and 59 < refreshed.expires_in <= 60
        site.clock.offset += 5  # the first token lapsed; the fresh one holds
        assert site.expire() == 0
        assert (await said(site, client, "after")).data == "after"
        assert (client.state, client.last_close, tokens.calls) == ("open", None, 2)
        answer = await client.refresh()  # on demand, too
        assert answer.expires_at == pytest.approx(site.clock() + 60, abs=1)
        assert tokens.calls == 3


async def test_a_refused_refresh_is_a_typed_error_and_the_socket_runs_on(site: Site) -> None:
    tokens = Tokens(site, "greg", "amanda", first=1.0)  # the fresh token names someone else
    outcomes = Outcomes()
    async with Client(site.url, token=tokens, on_refresh=outcomes, **FAST) as client:
        refused = await outcomes.next()
        assert isinstance(refused, RefreshError)
        assert (refused.error, refused.detail) == (
            "refresh_refused",
            "the token names another user",
        )
        with pytest.raises(RefreshError) as info:
            await client.refresh()
        assert info.value.error == "refresh_refused"
        assert (await said(site, client, "still here")).data == "still here"
        assert client.state == "open"


async def test_a_4401_reconnects_once_with_a_fresh_token(site: Site) -> None:
    tokens = Tokens(site)
    async with Client(site.url, token=tokens, **FAST) as client:
        await client.recovered()
        site.clock.offset += 61  # lapsed, and never refreshed (that would be 30 s away)
        assert site.expire() == 1
        resumed = await client.recovered()  # the next welcome, on a fresh token
        assert resumed.recovered is True
        assert client.last_close == (4401, "credential expired")
        assert (tokens.calls, client.state) == (2, "open")
        assert (await said(site, client, "back")).data == "back"
        site.clock.offset += 61  # no refresh succeeded since the last 4401: the client stops
        assert site.expire() == 1
        stop = await stopped(client)
        assert (stop.state, stop.code) == ("failed", 4401)
        assert tokens.calls == 2


async def test_after_a_4401_a_refused_handshake_stops_the_client(site: Site) -> None:
    tokens = Tokens(site, then=-1.0)  # every later token has lapsed already
    client = Client(site.url, token=tokens, token_in="subprotocol", **FAST)
    async with client:
        site.clock.offset += 61
        assert site.expire() == 1
        stop = await stopped(client)
        assert (stop.state, stop.code, stop.status) == ("failed", 4403, 403)
        assert tokens.calls == 2


async def test_a_token_callable_that_fails_counts_as_a_failed_handshake(site: Site) -> None:
    def broken() -> str:
        raise RuntimeError("login server down")

    client = Client(site.url, token=broken, max_handshake_failures=2, **FAST)
    with pytest.raises(ClientClosed) as info:
        await asyncio.wait_for(client.connect(), GUARD)
    assert info.value.state == "failed"
    assert "token_failed" in info.value.reason and "login server down" in info.value.reason


async def test_the_query_token_joins_the_query_the_url_has(site: Site) -> None:
    seen: list[str] = []

    def token() -> str:
        seen.append(site.mint("greg", 60))
        return seen[-1]

    async with Client(f"{site.url}?access_token=stale&x=1", token=token, token_in="query") as c:
        assert c.welcome is not None and c.welcome["user"] == "greg"
    with pytest.raises(RefreshError) as info:
        await Client(site.url).refresh()
    assert info.value.error == "no_token"
