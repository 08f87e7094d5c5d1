"""Users, secrets, a view and real-client helpers shared by the adapter test apps.

Every app speaks the same tiny protocol: on connect the server says
``{"hello": username, "groups": [...]}`` (so a client knows it is registered); a client sends
``{"group": g, "text": t}`` and everyone in ``g`` gets ``{"from": username, "text": t}``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from asgi_groups import InMemoryUsers, Registry, SimpleUser, WsView
from asgi_groups.types import Receive, Scope, Send, UserLike

SECRET = "adapter-tests-secret"
OLD_SECRET = "adapter-tests-old-secret"

USERS = InMemoryUsers(
    [
        SimpleUser(1, "greg", frozenset({"boys"})),
        SimpleUser(2, "chuck", frozenset({"boys"})),
        SimpleUser(3, "amanda", frozenset({"girls"})),
    ]
)


def hello(user: UserLike, groups: Any) -> dict[str, Any]:
    return {"hello": user.username, "groups": sorted(groups)}


async def relay(registry: Registry, user: UserLike, text: str) -> None:
    """Handle one inbound frame of the protocol."""
    cmd = json.loads(text)
    await registry.send_group(cmd["group"], {"from": user.username, "text": cmd["text"]})


class Hub(WsView):
    """The protocol as a ``WsView`` (login required)."""

    login_required = True

    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.accept()
        assert self.connection is not None
        await self.send_json(hello(self.user, self.connection.groups))

    async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
        await relay(self.registry, self.user, self.kwargs["text"])


class Events:
    """What an app's own startup and shutdown did, and whether the registry was up then."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.log: list[str] = []

    def startup(self) -> None:
        self.log.append("startup" + (" (registry up)" if self.registry.started else ""))

    def shutdown(self) -> None:
        self.log.append("shutdown" + (" (registry up)" if self.registry.started else ""))


# -- real clients ------------------------------------------------------------------------------


def ws(address: str, path: str = "/ws", cookie: str | None = None, **kw: Any) -> Any:
    """A ``websockets`` client with a same-origin ``Origin`` and an optional Cookie header."""
    headers = {"Cookie": cookie} if cookie else {}
    kw.setdefault("origin", f"http://{address}")
    return connect(f"ws://{address}{path}", additional_headers=headers, **kw)


async def recv_json(conn: ClientConnection, timeout: float = 5) -> Any:
    return json.loads(await asyncio.wait_for(conn.recv(), timeout))


async def silent(conn: ClientConnection, timeout: float = 0.2) -> bool:
    try:
        await asyncio.wait_for(conn.recv(), timeout)
    except TimeoutError:
        return True
    return False


def tamper(cookie: str) -> str:
    """A ``name=value`` cookie with one character of its signed payload changed.

    (Not the signature's last character: it may carry only padding bits and decode the same.)
    """
    name, _, value = cookie.partition("=")
    changed = "B" if value[1] == "A" else "A"
    return f"{name}={value[0]}{changed}{value[2:]}"


def client_cookie(client: Any, user_id: int, name: str = "session") -> str:
    """Log in through the app's own ``POST /login``; the ``Cookie`` header value it set."""
    client.cookies.clear()
    response = client.post("/login", json={"user_id": user_id})
    assert response.status_code == 200, response.text
    value = response.cookies[name]
    client.cookies.clear()
    return f"{name}={value}"


async def http_cookie(address: str, user_id: int, name: str = "session") -> str:
    """The same over real HTTP against a running server."""
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        response = await client.post("/login", json={"user_id": user_id})
        assert response.status_code == 200, response.text
        return f"{name}={response.cookies[name]}"
