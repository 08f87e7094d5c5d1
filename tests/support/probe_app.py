"""A messaging server for child-process tests that measure the server from outside.

Run it with ``serve_process("tests.support.probe_app:app", env=...)``. Configured from the
environment so each test can shape it:

- ``PROBE_REDIS_URL`` / ``PROBE_PREFIX``: a Redis-backed registry (default: in memory);
- ``PROBE_GROUPS``: user ``N`` is in group ``g{N % PROBE_GROUPS}`` (default 10);
- ``PROBE_MAX_MESSAGE_SIZE``: the ``/ws`` view's inbound frame limit (default 64 KiB);
- ``PROBE_PRESENCE``: ``0`` turns presence announcements off (default on);
- ``PROBE_REVALIDATE``: seconds between session re-checks (default off).

Endpoints: ``/ws`` is a ``MessagingView`` with the library's default limits; ``/ws-unlimited``
is the same view without its own frame limit, so only the server's ``ws_max_size`` applies;
``GET /debug`` answers the registry's counters, the number of asyncio tasks and the process
id, so a test can see leaks from outside. The cookie
``session=<N>`` logs in user ``N`` (any positive integer; signing is tested elsewhere).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from asgi_groups import GroupsMiddleware, Registry, SimpleUser
from asgi_groups.limits import KiB
from asgi_groups.messaging import MessagingView, UserRef
from asgi_groups.types import Receive, Scope, Send, Session, UserLike

from .servers import run_lifespan

GROUPS = int(os.environ.get("PROBE_GROUPS", "10"))
MAX_MESSAGE_SIZE = int(os.environ.get("PROBE_MAX_MESSAGE_SIZE", str(64 * KiB)))
PRESENCE = os.environ.get("PROBE_PRESENCE", "1") != "0"
REVALIDATE = float(os.environ["PROBE_REVALIDATE"]) if os.environ.get("PROBE_REVALIDATE") else None


def user(number: int) -> SimpleUser:
    """User ``number``: named ``user<number>``, in group ``g<number % GROUPS>``."""
    return SimpleUser(number, f"user{number}", frozenset({f"g{number % GROUPS}"}))


def _number(value: object) -> int | None:
    text = str(value)
    if text.isascii() and text.isdigit() and 0 < len(text) < 10:
        return int(text)
    return None


class NumberCookie:
    """The cookie value is the user number: a stand-in codec for load tests."""

    cookie_name = "session"

    def decode(self, value: str) -> Session | None:
        number = _number(value)
        return {"user_id": number} if number else None

    def encode(self, session: Session) -> str:
        return str(session["user_id"])


async def load_user(session: Session) -> UserLike | None:
    number = _number(session.get("user_id"))
    return user(number) if number else None


class NumberDirectory:
    """Every ``user<N>`` exists; every ``g<N>`` group exists."""

    async def find_user(self, user_name: str) -> UserRef | None:
        number = _number(user_name.casefold().removeprefix("user"))
        return UserRef(str(number), f"user{number}") if number else None

    async def username_of(self, user_id: str) -> str | None:
        number = _number(user_id)
        return f"user{number}" if number else None

    async def group_exists(self, name: str) -> bool:
        return name.startswith("g") and _number(name[1:]) is not None

    async def listing(self) -> tuple[list[str], list[str]]:
        return [], []


class ProbeView(MessagingView):
    """The messaging protocol with the library's default abuse limits."""

    directory = NumberDirectory()
    announce_presence = PRESENCE
    max_message_size = MAX_MESSAGE_SIZE


class UnlimitedView(ProbeView):
    """No frame limit of its own: what the server lets through reaches the view."""

    max_message_size = 1 << 40


redis_url = os.environ.get("PROBE_REDIS_URL") or None
registry = (
    Registry(redis_url, prefix=os.environ.get("PROBE_PREFIX", "probe")) if redis_url else Registry()
)
views = {"/ws": ProbeView.as_asgi(), "/ws-unlimited": UnlimitedView.as_asgi()}


async def router(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        view = views.get(scope["path"])
        if view is not None:
            await view(scope, receive, send)
            return
        await send({"type": "websocket.close", "code": 1008})
    elif scope["type"] == "http":
        await http(scope, receive, send)


async def http(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["path"] != "/debug":
        await respond(send, 404, {"error": "not found"})
        return
    stats = registry.stats()
    body: dict[str, Any] = {
        "pid": os.getpid(),
        "connections": stats.connections,
        "users": stats.users,
        "groups": stats.groups,
        "slow_closed": stats.slow_closed,
        "deliveries": stats.deliveries,
        "tasks": len(asyncio.all_tasks()),
        "backend": stats.backend,
    }
    await respond(send, 200, body)


async def respond(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


middleware = GroupsMiddleware(
    router, registry, sessions=NumberCookie(), users=load_user, revalidate_every=REVALIDATE
)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await run_lifespan(registry, receive, send)
        return
    await middleware(scope, receive, send)
