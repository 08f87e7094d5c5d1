"""A recoverable view in its own server process, for recovery across processes and restarts.

Configured from the environment: ``ASGI_GROUPS_REDIS_URL`` (unset: the memory backend),
``ASGI_GROUPS_PREFIX``, ``ASGI_GROUPS_HISTORY`` (``size,ttl,max_replay``) and
``ASGI_GROUPS_QUEUE`` (outbound queue limit, messages). Users come from the test cookie
(``session=<id>``, users 1-3 of ``tests.core_app``); every socket joins ``lobby`` and its
user's groups. ``POST /send?group=NAME&n=COUNT`` (or ``user=ID``) publishes ``{"n": i}``
from this process.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs

from asgi_groups import GroupsMiddleware, HistoryLimits, QueueLimits, RecoverableView, Registry
from asgi_groups.types import Receive, Scope, Send
from tests.core_app import USERS
from tests.support.codecs import PlainCookie
from tests.support.servers import run_lifespan


def _registry() -> Registry:
    size, ttl, max_replay = (os.environ.get("ASGI_GROUPS_HISTORY") or "100,300,300").split(",")
    history = HistoryLimits(size=int(size), ttl=float(ttl), max_replay=int(max_replay))
    limits = QueueLimits(max_messages=int(os.environ.get("ASGI_GROUPS_QUEUE", "1000")))
    url = os.environ.get("ASGI_GROUPS_REDIS_URL")
    if not url:
        return Registry(history=history, limits=limits)
    return Registry(
        url,
        history=history,
        limits=limits,
        prefix=os.environ["ASGI_GROUPS_PREFIX"],
        health_check_interval=5.0,  # as in production: a busy test machine is not an outage
        reconnect_backoff=(0.05, 0.5),
        socket_timeout=1.0,
        connect_timeout=1.0,
    )


registry = _registry()


class Room(RecoverableView):
    login_required = True
    groups = ["lobby"]


async def publish(scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /send?group=NAME&n=COUNT``: ``{"n": 0}`` .. ``{"n": COUNT-1}`` to the group."""
    query = parse_qs(scope.get("query_string", b"").decode())
    count, first = int(query["n"][0]), int(query.get("first", ["0"])[0])
    for n in range(first, first + count):
        if "user" in query:
            await registry.send_user(query["user"][0], {"n": n})
        else:
            await registry.send_group(query["group"][0], {"n": n})
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def route(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await run_lifespan(registry, receive, send)
    elif scope["type"] == "http":
        await publish(scope, receive, send)
    else:
        await Room.as_asgi()(scope, receive, send)


app: Any = GroupsMiddleware(route, registry, sessions=PlainCookie(), users=USERS)
