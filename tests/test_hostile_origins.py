"""Hostile Origin headers against a real uvicorn server: refused with 403 before the app runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import connect

from asgi_groups import GroupsMiddleware, Registry, WsView
from asgi_groups.types import ASGIApp, Receive, Scope, Send

from .support.hostile import handshake_status
from .support.servers import serve


class Flagged:
    """The app behind the middleware: counts the sockets that reached it, then serves a view."""

    def __init__(self) -> None:
        self.calls = 0
        self.view = WsView.as_asgi()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await self.view(scope, receive, send)


@dataclass
class Site:
    """One server, one middleware per path, each with its own Origin policy and inner app."""

    address: str
    inner: dict[str, Flagged] = field(default_factory=dict)

    def calls(self, path: str) -> int:
        return self.inner[path].calls


POLICIES: dict[str, dict[str, Any]] = {
    "/default": {},
    "/missing-ok": {"allow_missing_origin": True},
    "/dot": {"allowed_origins": [".example.com"]},
    "/star": {"allowed_origins": ["https://*.example.com"]},
    "/any": {"allowed_origins": "*"},
    "/any-and-null": {"allowed_origins": "*, null"},
}


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    registry = Registry()
    inner = {path: Flagged() for path in POLICIES}
    guarded: dict[str, ASGIApp] = {
        path: GroupsMiddleware(inner[path], registry, **options)
        for path, options in POLICIES.items()
    }

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        await guarded[scope["path"]](scope, receive, send)

    async with registry, serve(router) as address:
        yield Site(address, inner)


def hostile_origins(address: str) -> list[str]:
    """Origins a same-origin policy must refuse (the server itself is ``http://address``)."""
    host, port = address.rsplit(":", 1)
    return [
        "http://evil.example",
        "null",
        "",
        "http://[::1",
        "javascript:alert(1)",
        "http://a b",
        f"https://{address}",  # the same host over another scheme
        f"http://{host}:{int(port) + 1}",  # another port
        f"http://{address}/chat",  # not a serialised origin
        f"http://user@{address}",
        f"http://{address}\\@evil.example",
        "file://",
        "data:text/html,x",
    ]


async def test_hostile_origins_refused_403_before_the_app_runs(site: Site) -> None:
    """Each hostile Origin gets HTTP 403 and the app behind the middleware is never called."""
    for origin in hostile_origins(site.address):
        status = await handshake_status(site.address, {"Origin": origin}, "/default")
        assert status == 403, origin
    assert site.calls("/default") == 0
    assert await handshake_status(site.address, {"Origin": f"http://{site.address}"}, "/default")
    assert site.calls("/default") == 1  # the same origin does reach it


async def test_missing_origin_refused_unless_allowed(site: Site) -> None:
    """No Origin header: 403 by default, accepted with ``allow_missing_origin=True``."""
    assert await handshake_status(site.address, {}, "/default") == 403
    assert site.calls("/default") == 0
    async with connect(f"ws://{site.address}/missing-ok") as ws:  # sends no Origin
        await ws.ping()
    assert site.calls("/missing-ok") == 1
    assert await handshake_status(site.address, {"Origin": "null"}, "/missing-ok") == 403
    assert site.calls("/missing-ok") == 1  # allowing none is not allowing "null"


WILDCARD_CASES: list[tuple[str, str, bool]] = [
    ("/dot", "https://chat.example.com", True),
    ("/dot", "https://example.com", True),
    ("/dot", "http://a.b.example.com:8443", True),
    ("/dot", "HTTPS://CHAT.EXAMPLE.COM", True),
    ("/dot", "https://example.com.evil.io", False),
    ("/dot", "https://evilexample.com", False),
    ("/dot", "https://example.co", False),
    ("/dot", "https://chat.example.com.", False),
    ("/dot", "https://evil.io/.example.com", False),
    ("/dot", "https://evil.io#.example.com", False),
    ("/dot", "https://evil.io?.example.com", False),
    ("/dot", "null", False),
    ("/star", "https://chat.example.com", True),
    ("/star", "https://example.com", True),
    ("/star", "http://chat.example.com", False),
    ("/star", "https://example.com.evil.io", False),
    ("/star", "https://evilexample.com", False),
    ("/any", "https://anything.io", True),
    ("/any", "http://localhost:1234", True),
    ("/any", "null", False),  # "*" is any http(s) origin; the opaque origin must be listed
    ("/any", "file://", False),
    ("/any", "javascript:alert(1)", False),
    ("/any-and-null", "null", True),
    ("/any-and-null", "https://anything.io", True),
]


async def test_wildcard_allow_list(site: Site) -> None:
    """A ``.example.com`` / ``https://*.example.com`` entry admits the domain and its subdomains
    (101) and refuses look-alikes with 403 without calling the app; ``"*"`` admits any http(s)
    origin but not ``null`` (sandboxed frames, files) unless ``null`` is listed too."""
    admitted = dict.fromkeys(POLICIES, 0)
    for path, origin, allowed in WILDCARD_CASES:
        status = await handshake_status(site.address, {"Origin": origin}, path)
        assert status == (101 if allowed else 403), (path, origin)
        admitted[path] += allowed
        assert site.calls(path) == admitted[path], (path, origin)
