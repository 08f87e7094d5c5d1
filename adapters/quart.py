"""Quart: install on ``app.asgi_app``, serve views, and helpers for ``@app.websocket`` handlers.

::

    app = Quart(__name__)
    app.config["SECRET_KEY"] = ...
    registry = install(app, users=store, views={"/chat": ChatView.as_asgi()})

    @app.websocket("/ws")
    @login_required
    async def ws() -> None:
        async with joined() as conn:
            while True:
                text = await websocket.receive()
                await registry.send_group("boys", {"from": current_user().username, "text": text})

The session cookie is read as Quart writes it: ``SECRET_KEY`` (+ ``SECRET_KEY_FALLBACKS``),
``SESSION_COOKIE_NAME`` and ``PERMANENT_SESSION_LIFETIME`` from ``app.config``. A client
disconnect reaches a handler as ``CancelledError``: let it propagate. Tasks a handler spawns
need ``copy_current_websocket_context`` to use the ``websocket`` global.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar, cast

from quart import Quart, abort, current_app, has_websocket_context, websocket
from quart.wrappers import Websocket

from asgi_groups import codes
from asgi_groups.connection import Connection
from asgi_groups.middleware import REGISTRY_KEY, GroupsMiddleware
from asgi_groups.registry import Registry
from asgi_groups.request import Request
from asgi_groups.sessions import QuartSessionCookie
from asgi_groups.types import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    SessionCodec,
    UserLike,
    UserLoader,
    UserStore,
)

from ._lifespan import groups_for, registered

__all__ = [
    "EXTENSION_KEY",
    "asgi_send",
    "current_registry",
    "current_user",
    "install",
    "joined",
    "login_required",
]

EXTENSION_KEY = "asgi_groups"
"""The ``app.extensions`` entry that holds the registry."""

P = ParamSpec("P")
R = TypeVar("R")


class _Views:
    """Serve ``WsView`` apps at exact WebSocket paths ahead of Quart; the rest goes to Quart."""

    def __init__(self, app: ASGIApp, views: Mapping[str, ASGIApp]) -> None:
        self.app = app
        self.views = dict(views)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        view = self.views.get(scope["path"]) if scope["type"] == "websocket" else None
        await (view or self.app)(scope, receive, send)


def install(
    app: Quart,
    registry: Registry | None = None,
    *,
    views: Mapping[str, ASGIApp] | None = None,
    sessions: SessionCodec | Sequence[SessionCodec] | None = None,
    users: UserStore | UserLoader | None = None,
    allowed_origins: Iterable[str] | str | None = None,
    allow_missing_origin: bool = False,
    revalidate_every: float | None = None,
) -> Registry:
    """Put ``GroupsMiddleware`` on ``app.asgi_app`` and run ``registry`` while the app serves.

    ``views`` maps WebSocket paths to ``View.as_asgi()`` apps. ``sessions`` defaults to Quart's
    own cookie as configured in ``app.config`` (set ``SECRET_KEY`` first). The registry starts
    before the app's other ``before_serving`` functions and closes after its ``after_serving``
    ones. Returns the registry.
    """
    registry = registry if registry is not None else Registry()
    inner = cast(ASGIApp, app.asgi_app)
    if views:
        inner = _Views(inner, views)
    app.asgi_app = GroupsMiddleware(  # type: ignore[method-assign,assignment]
        inner,
        registry,
        sessions=sessions if sessions is not None else QuartSessionCookie.from_app(app),
        users=users,
        allowed_origins=allowed_origins,
        allow_missing_origin=allow_missing_origin,
        revalidate_every=revalidate_every,
    )
    app.before_serving_funcs.insert(0, registry.start)
    app.after_serving_funcs.append(registry.close)
    app.extensions[EXTENSION_KEY] = registry
    return registry


def current_user() -> UserLike:
    """The user of the current WebSocket (anonymous when not logged in)."""
    return Request(cast(Scope, websocket.scope)).user


def current_registry() -> Registry:
    """The registry, in WebSocket and HTTP handlers alike."""
    registry = cast(Scope, websocket.scope).get(REGISTRY_KEY) if has_websocket_context() else None
    if registry is None:
        registry = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(registry, Registry):
        raise RuntimeError("no registry: call install(app, ...)")
    return registry


def login_required(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Refuse anonymous users at the handshake (HTTP 403) in an ``@app.websocket`` handler."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if not current_user().is_authenticated:
            abort(403)
        return await handler(*args, **kwargs)

    return wrapper


def asgi_send(ws: Websocket) -> Send:
    """An ASGI ``send`` over Quart's websocket object, whose ``send`` takes data, not events."""

    async def send(message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            text = message.get("text")
            await ws.send(text if text is not None else message["bytes"])
        elif kind == "websocket.close":
            code = int(message.get("code") or codes.NORMAL)
            await ws.close(code, str(message.get("reason") or ""))
        else:
            raise RuntimeError(f"cannot send {kind!r} through Quart's websocket")

    return send


@contextlib.asynccontextmanager
async def joined(
    groups: Iterable[str] = (), *, user_groups: bool = True
) -> AsyncIterator[Connection]:
    """Accept the current WebSocket and register it, in ``groups`` and the user's own.

    Frames sent to the connection (from any task) go out through this socket; it leaves the
    registry when the block ends, including on the client's disconnect (``CancelledError``).
    """
    ws = cast(Websocket, cast(Any, websocket)._get_current_object())
    await ws.accept()
    user = current_user()
    async with registered(
        current_registry(), asgi_send(ws), user, groups_for(user, groups, user_groups)
    ) as conn:
        yield conn
