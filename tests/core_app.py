"""A small app over the core API, driven by JSON commands, for end-to-end tests."""

from __future__ import annotations

import json
from typing import Any

from asgi_groups import GroupsMiddleware, InMemoryUsers, QueueLimits, Registry, SimpleUser, WsView
from asgi_groups.types import ASGIApp, Receive, Scope, Send

from .support.codecs import PlainCookie

__all__ = ["USERS", "Hub", "PlainCookie", "make_app"]

USERS = InMemoryUsers(
    [
        SimpleUser(1, "greg", frozenset({"boys"})),
        SimpleUser(2, "chuck", frozenset({"boys"})),
        SimpleUser(3, "amanda", frozenset({"girls"})),
    ]
)


class Hub(WsView):
    """``{"op": "group"|"user"|"all"|"join"|"leave"|"boom"|"close", ...}`` → registry calls."""

    login_required = True
    disconnects: list[tuple[str, int | None]] = []

    async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
        cmd = json.loads(self.kwargs.get("text") or "{}")
        op = cmd.get("op")
        me = self.connection if cmd.get("exclude_me") else None
        body = {"from": self.user.username, "text": cmd.get("text")}
        if op == "group":
            await self.registry.send_group(cmd["group"], body, exclude=me)
        elif op == "user":
            await self.registry.send_user(cmd["user"], body, exclude=me)
        elif op == "all":
            await self.registry.broadcast(body, exclude=me)
        elif op == "join":
            await self.join(cmd["group"])
            await self.send_json({"joined": cmd["group"]})
        elif op == "leave":
            await self.leave(cmd["group"])
            await self.send_json({"left": cmd["group"]})
        elif op == "boom":
            raise RuntimeError("boom")
        elif op == "close":
            await self.close(int(cmd["code"]))
        elif op == "blob":
            await self.registry.send_group(cmd["group"], "x" * int(cmd["size"]) + f"|{cmd['n']}")
        elif op == "presence":
            await self.send_json({"presence": await self.registry.presence(cmd["group"])})

    async def on_disconnect(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.disconnects.append((self.user.username, self.close_code))


def make_app(registry: Registry | None = None, **options: Any) -> tuple[ASGIApp, Registry]:
    registry = registry or Registry(limits=QueueLimits(max_messages=100, max_bytes=256 * 1024))
    app = GroupsMiddleware(Hub.as_asgi(), registry, sessions=PlainCookie(), users=USERS, **options)
    return app, registry
