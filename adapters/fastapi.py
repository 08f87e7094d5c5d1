"""FastAPI: wrap an existing app in one call, serve views, and inject users and connections.

::

    app = FastAPI(lifespan=my_lifespan)
    registry = install(app, sessions=StarletteSessionCookie(SECRET), users=store)
    add_view(app, "/chat", ChatView)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, user: CurrentUser, conn: Connection) -> None:
        async for text in websocket.iter_text():
            await registry.send_group("boys", {"from": user.username, "text": text})
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, WebSocket
from fastapi.requests import HTTPConnection

from asgi_groups.connection import Connection as _Connection
from asgi_groups.registry import Registry
from asgi_groups.types import UserLike

from . import starlette as _starlette
from .starlette import STATE_KEY, LoginRequired, add_view, install, joined, lifespan

__all__ = [
    "STATE_KEY",
    "Connection",
    "CurrentRegistry",
    "CurrentUser",
    "LoginRequired",
    "OptionalUser",
    "add_view",
    "current_registry",
    "current_user",
    "install",
    "joined",
    "joined_connection",
    "lifespan",
    "optional_user",
]


def optional_user(websocket: WebSocket) -> UserLike:
    """The socket's user, possibly anonymous."""
    return _starlette.current_user(websocket)


def current_user(websocket: WebSocket) -> UserLike:
    """The socket's logged-in user; an anonymous one is refused at the handshake (HTTP 403)."""
    user = _starlette.current_user(websocket)
    if not user.is_authenticated:
        raise LoginRequired()
    return user


def current_registry(conn: HTTPConnection) -> Registry:
    """The registry, in WebSocket and HTTP handlers alike."""
    return _starlette.current_registry(conn)


async def joined_connection(websocket: WebSocket) -> AsyncIterator[_Connection]:
    """Accept, register in the user's groups, yield the Connection, and leave afterwards."""
    async with joined(websocket) as conn:
        yield conn


CurrentUser = Annotated[UserLike, Depends(current_user)]
OptionalUser = Annotated[UserLike, Depends(optional_user)]
CurrentRegistry = Annotated[Registry, Depends(current_registry)]
Connection = Annotated[_Connection, Depends(joined_connection)]
