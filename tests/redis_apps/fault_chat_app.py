"""The chat protocol over the recoverable protocol on Redis, instrumented for fault runs.

A ``MessagingView`` that is also a ``RecoverableView`` (as the chat example's ``ChatView``), with
fixed users ``user1`` .. ``user32`` (cookie ``session=<id>``), all in group ``room``.

Configured from the environment: ``ASGI_GROUPS_REDIS_URL``, ``ASGI_GROUPS_PREFIX``,
``FAULT_HISTORY`` (``size,ttl,max_replay``, default ``2000,300,2000``) and, to override the
library's own defaults, ``FAULT_HEALTH_CHECK`` / ``FAULT_SOCKET_TIMEOUT`` /
``FAULT_CONNECT_TIMEOUT`` (seconds) and ``FAULT_BACKOFF`` (``first,cap``).

What it adds for measurement, and nothing else:

- every inbound frame is answered, after the view has handled it, with
  ``{"type": "ack", "id": <the frame's "id">}``, so that an error frame can be matched to the
  message it answers (it comes before that message's ack);
- ``GET /state``: this process's backend state and the wall-clock times of its
  ``on_backend_down`` / ``on_backend_up`` hooks;
- ``POST /send?group=NAME&n=COUNT&size=BYTES``: publishes ``COUNT`` messages
  ``{"type": "bulk", "tag": "bulk<i>", "pad": "x" * BYTES}`` from this process and answers
  the outcome of each (``"ok"`` or the exception's class and text).

Log lines go to stderr at INFO, with the logger's name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from typing import Any
from urllib.parse import parse_qs

from asgi_groups import (
    GroupsMiddleware,
    HistoryLimits,
    InMemoryUsers,
    RecoverableView,
    Registry,
    SimpleUser,
)
from asgi_groups.errors import AsgiGroupsError
from asgi_groups.messaging import MessagingView, StaticDirectory
from asgi_groups.types import Receive, Scope, Send
from tests.support.codecs import PlainCookie
from tests.support.servers import run_lifespan

logging.basicConfig(
    level=logging.INFO,
    stream=sys.stderr,
    format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
    datefmt="%H:%M:%S",
)

GROUP = "room"
PEOPLE = [SimpleUser(i, f"user{i}", frozenset({GROUP})) for i in range(1, 33)]
HOOKS: dict[str, list[float]] = {"down": [], "up": []}
DOWN_ERRORS: list[str] = []


def _down(error: Exception) -> None:
    HOOKS["down"].append(time.time())
    DOWN_ERRORS.append(repr(error)[:300])


async def _up() -> None:
    HOOKS["up"].append(time.time())


def _options() -> dict[str, Any]:
    """Timing options given in the environment; the library's defaults for the rest."""
    options: dict[str, Any] = {}
    for name, key in (
        ("FAULT_HEALTH_CHECK", "health_check_interval"),
        ("FAULT_SOCKET_TIMEOUT", "socket_timeout"),
        ("FAULT_CONNECT_TIMEOUT", "connect_timeout"),
    ):
        if os.environ.get(name):
            options[key] = float(os.environ[name])
    if os.environ.get("FAULT_BACKOFF"):
        first, cap = os.environ["FAULT_BACKOFF"].split(",")
        options["reconnect_backoff"] = (float(first), float(cap))
    return options


def _registry() -> Registry:
    size, ttl, replay = (os.environ.get("FAULT_HISTORY") or "2000,300,2000").split(",")
    return Registry(
        os.environ["ASGI_GROUPS_REDIS_URL"],
        prefix=os.environ["ASGI_GROUPS_PREFIX"],
        history=HistoryLimits(size=int(size), ttl=float(ttl), max_replay=int(replay)),
        on_backend_down=_down,
        on_backend_up=_up,
        **_options(),
    )


registry = _registry()


class FaultChat(RecoverableView, MessagingView):
    """The chat protocol in recoverable envelopes; each inbound frame gets an ``ack``."""

    directory = StaticDirectory(PEOPLE)
    announce_presence = False  # presence is state, not traffic: it would only add noise

    async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().on_receive(scope, receive, send)
        with contextlib.suppress(AsgiGroupsError, ValueError, TypeError, AttributeError):
            frame_id = json.loads(self.kwargs.get("text") or "{}").get("id")
            await self.send_json({"type": "ack", "id": frame_id})


async def _json(send: Send, body: Any, status: int = 200) -> None:
    payload = json.dumps(body, default=str).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _bulk(query: dict[str, list[str]]) -> list[str]:
    """Publish the ``/send`` messages; the outcome of each."""
    group, count = query["group"][0], int(query["n"][0])
    pad = "x" * int(query.get("size", ["0"])[0])
    outcomes = []
    for i in range(count):
        try:
            await registry.send_group(group, {"type": "bulk", "tag": f"bulk{i}", "pad": pad})
            outcomes.append("ok")
        except Exception as exc:  # the outcome, whatever it is, is what the test reads
            outcomes.append(f"{type(exc).__name__}: {exc}")
    return outcomes


async def http(scope: Scope, receive: Receive, send: Send) -> None:
    query = parse_qs(scope.get("query_string", b"").decode())
    if scope["path"] == "/state":
        stats = registry.stats().backend
        await _json(
            send,
            {
                "pid": os.getpid(),
                "down": bool(stats.get("down")),
                "down_at": HOOKS["down"],
                "up_at": HOOKS["up"],
                "down_errors": DOWN_ERRORS,
                "stats": stats,
            },
        )
    elif scope["path"] == "/send":
        await _json(send, {"outcomes": await _bulk(query)})
    else:
        await _json(send, {"error": "not found"}, 404)


async def route(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await run_lifespan(registry, receive, send)
    elif scope["type"] == "http":
        await http(scope, receive, send)
    else:
        await FaultChat.as_asgi()(scope, receive, send)


app: Any = GroupsMiddleware(route, registry, sessions=PlainCookie(), users=InMemoryUsers(PEOPLE))
