"""Starlette apps for the adapter tests: routes, mounts, a plain endpoint, both wirings."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket

from asgi_groups import GroupsMiddleware, Registry
from asgi_groups.adapters.starlette import current_registry, current_user, install, joined, lifespan
from asgi_groups.sessions import StarletteSessionCookie

from .common import SECRET, USERS, Events, Hub, hello, relay

ENDED: list[str] = []  # who left the plain endpoint's block and ran the code after it


async def login(request: Request) -> JSONResponse:
    request.session["user_id"] = (await request.json())["user_id"]
    return JSONResponse({"ok": True})


async def logout(request: Request) -> JSONResponse:
    user_id = request.session.pop("user_id", None)
    if user_id is not None:
        await current_registry(request).disconnect_user(user_id)
    return JSONResponse({"ok": True})


async def state(request: Request) -> JSONResponse:
    return JSONResponse({"from_own_lifespan": getattr(request.state, "from_own_lifespan", False)})


async def plain(websocket: WebSocket) -> None:
    """A plain Starlette endpoint: the adapter's ``joined`` does accept, register and leave."""
    user = current_user(websocket)
    async with joined(websocket, ["lobby"]) as conn:
        await conn.send(hello(user, conn.groups))
        async for text in websocket.iter_text():
            await relay(current_registry(websocket), user, text)
    ENDED.append(user.username)


def routes() -> list[Any]:
    return [
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/state", state),
        WebSocketRoute("/ws", Hub.as_asgi()),
        WebSocketRoute("/plain", plain),
        Mount("/mounted", routes=[WebSocketRoute("/ws", Hub.as_asgi())]),
        Mount("/hub", app=Hub.as_asgi()),
    ]


def make_app(
    wiring: str = "middleware", registry: Registry | None = None
) -> tuple[Starlette, Registry, Events]:
    """``"middleware"``: declared ``Middleware`` + ``lifespan(registry, own)``, Starlette's
    ``SessionMiddleware`` outside (its ``scope["session"]`` is used, no codec);
    ``"install"``: an existing app wrapped by ``install``, which reads the cookie itself."""
    registry = registry or Registry()
    events = Events(registry)

    @contextlib.asynccontextmanager
    async def own_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        events.startup()
        yield {"from_own_lifespan": True}
        events.shutdown()

    if wiring == "middleware":
        app = Starlette(
            routes=routes(),
            middleware=[
                Middleware(SessionMiddleware, secret_key=SECRET),
                Middleware(GroupsMiddleware, registry=registry, users=USERS),
            ],
            lifespan=lifespan(registry, own_lifespan),
        )
    else:
        app = Starlette(routes=routes(), lifespan=own_lifespan)
        app.add_middleware(SessionMiddleware, secret_key=SECRET)
        install(app, registry, sessions=StarletteSessionCookie(SECRET), users=USERS)
    return app, registry, events
