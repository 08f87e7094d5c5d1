"""FastAPI apps for the adapter tests: ``install`` on an existing app, a view, dependencies."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from starlette.middleware.sessions import SessionMiddleware

from asgi_groups import Registry
from asgi_groups.adapters.fastapi import (
    Connection,
    CurrentRegistry,
    CurrentUser,
    OptionalUser,
    add_view,
    install,
)
from asgi_groups.sessions import StarletteSessionCookie

from .common import SECRET, USERS, Events, Hub, hello, relay


def make_app(own_lifespan: bool = True) -> tuple[FastAPI, Registry, Events]:
    """An app as its author wrote it, then wrapped in one ``install`` call."""
    registry = Registry()
    events = Events(registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.startup()
        yield {"from_own_lifespan": True}
        events.shutdown()

    app = FastAPI(lifespan=lifespan if own_lifespan else None)
    app.add_middleware(SessionMiddleware, secret_key=SECRET)

    @app.post("/login")
    async def login(request: Request) -> dict[str, bool]:
        request.session["user_id"] = (await request.json())["user_id"]
        return {"ok": True}

    @app.post("/notify/{group}")
    async def notify(group: str, request: Request, registry: CurrentRegistry) -> dict[str, Any]:
        text = (await request.body()).decode()
        await registry.send_group(group, {"from": "server", "text": text})
        return {"sent": group}

    @app.get("/state")
    async def state(request: Request) -> dict[str, Any]:
        return {"from_own_lifespan": getattr(request.state, "from_own_lifespan", False)}

    @app.websocket("/ws")
    async def ws(
        websocket: WebSocket, user: CurrentUser, conn: Connection, registry: CurrentRegistry
    ) -> None:
        await conn.send(hello(user, conn.groups))
        async for text in websocket.iter_text():
            await relay(registry, user, text)

    @app.websocket("/open")
    async def open_socket(websocket: WebSocket, user: OptionalUser, conn: Connection) -> None:
        await conn.send(hello(user, conn.groups))
        with contextlib.suppress(WebSocketDisconnect):
            await websocket.receive_text()

    install(app, registry, sessions=StarletteSessionCookie(SECRET), users=USERS)
    add_view(app, "/view", Hub)
    return app, registry, events
