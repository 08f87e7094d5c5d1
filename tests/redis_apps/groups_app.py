"""A raw ASGI app over a Redis-backed Registry, driven by its websocket clients.

Configured from the environment: ``ASGI_GROUPS_REDIS_URL``, ``ASGI_GROUPS_PREFIX`` and, optionally,
``ASGI_GROUPS_PRESENCE_TTL`` / ``ASGI_GROUPS_HEALTH_CHECK`` (seconds).

``/ws?user=<id>&groups=a,b`` joins the groups, then answers ``{"reply": "ready", "id": ...}``.
Each JSON command ``{"op": ...}`` gets exactly one ``{"reply": op, "ok": ..., ...}``;
``{"missed": cause}`` says that messages may have been missed during a break in the backend;
anything else a socket receives is a message delivered by the registry, as it was sent.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import parse_qs

from asgi_groups import BackendUnavailable, Registry, SimpleUser
from asgi_groups.connection import Connection
from asgi_groups.frames import encode
from asgi_groups.types import Receive, Scope, Send
from tests.support.servers import run_lifespan

HOOKS = {"down": 0, "up": 0}


def _down(error: Exception) -> None:
    HOOKS["down"] += 1


async def _up() -> None:
    HOOKS["up"] += 1


registry = Registry(
    os.environ["ASGI_GROUPS_REDIS_URL"],
    prefix=os.environ["ASGI_GROUPS_PREFIX"],
    presence_ttl=float(os.environ.get("ASGI_GROUPS_PRESENCE_TTL", "30")),
    health_check_interval=float(os.environ.get("ASGI_GROUPS_HEALTH_CHECK", "1")),
    reconnect_backoff=(0.05, 0.5),
    socket_timeout=1.0,
    connect_timeout=1.0,
    on_backend_down=_down,
    on_backend_up=_up,
)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await run_lifespan(registry, receive, send)
    elif scope["type"] == "websocket":
        await websocket(scope, receive, send)


async def websocket(scope: Scope, receive: Receive, send: Send) -> None:
    query = parse_qs(scope.get("query_string", b"").decode())
    user_id = query["user"][0]
    groups = [g for g in query.get("groups", [""])[0].split(",") if g]
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    conn = await registry.connect(send, SimpleUser(user_id, f"user{user_id}"))
    registry.on_missed(conn, _tell_missed)
    try:
        for group in groups:
            await registry.join(conn, group)
        await conn.send(json.dumps({"reply": "ready", "id": conn.id, "pid": os.getpid()}))
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None and conn.is_open:
                reply = await command(conn, json.loads(message["text"]))
                await conn.send(json.dumps(reply))
    finally:
        conn.finish()


def _tell_missed(conn: Connection, cause: str) -> None:
    """After a break in the backend: say so on the socket, which stays open."""
    conn.deliver(encode(json.dumps({"missed": cause})))


async def command(conn: Connection, cmd: dict[str, Any]) -> dict[str, Any]:
    op = cmd["op"]
    reply: dict[str, Any] = {"reply": op, "ok": True}
    exclude = conn if cmd.get("exclude_self") else None
    try:
        if op == "send_group":
            await registry.send_group(cmd["group"], cmd["text"], exclude=exclude)
        elif op == "send_user":
            await registry.send_user(cmd["user"], cmd["text"], exclude=exclude)
        elif op == "broadcast":
            await registry.broadcast(cmd["text"], exclude=exclude)
        elif op == "presence":
            reply["presence"] = await registry.presence(cmd["group"])
        elif op == "disconnect_user":
            await registry.disconnect_user(cmd["user"])
        elif op == "join_user":
            await registry.join_user(cmd["user"], cmd["group"])
        elif op == "leave_user":
            await registry.leave_user(cmd["user"], cmd["group"])
        elif op == "join":
            await registry.join(conn, cmd["group"])
        elif op == "stats":
            reply["stats"] = registry.stats().backend
            reply["hooks"] = dict(HOOKS)
        else:
            reply.update(ok=False, error=f"unknown op {op!r}")
    except BackendUnavailable as exc:
        reply.update(ok=False, error="BackendUnavailable", detail=str(exc))
    return reply
