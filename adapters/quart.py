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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, ParamSpec, TypeVar, cast

from asgiref.sync import markcoroutinefunction
from quart import Quart, current_app, has_websocket_context, websocket
from quart.wrappers import Websocket

from asgi_groups import codes
from asgi_groups.connection import Connection
from asgi_groups.credentials import QuartAuthCookie
from asgi_groups.middleware import CONNECTION_KEY, REGISTRY_KEY, GroupsMiddleware, reject
from asgi_groups.registry import Registry
from asgi_groups.request import Request
from asgi_groups.sessions import QuartSessionCookie
from asgi_groups.types import ASGIApp, Message, Receive, Scope, Send, UserLike
from asgi_groups.views import groups_to_join

__all__ = [
    "EXTENSION_KEY",
    "SEND_KEY",
    "asgi_send",
    "current_registry",
    "current_user",
    "install",
    "joined",
    "login_required",
]

EXTENSION_KEY = "asgi_groups"
"""The ``app.extensions`` entry that holds the registry."""

SEND_KEY = "asgi_groups.send"
"""The scope entry holding the server's own ASGI ``send`` (Quart's ``websocket`` wraps it), so
that a handshake can be refused as the core refuses it."""

P = ParamSpec("P")
R = TypeVar("R")


class _Front:
    """Ahead of Quart: keep the server's ``send`` in a socket's scope, and serve ``WsView``
    apps at exact WebSocket paths; the rest goes to Quart."""

    def __init__(self, app: ASGIApp, views: Mapping[str, ASGIApp]) -> None:
        self.app = app
        self.views = dict(views)

    @markcoroutinefunction
    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing back the inner coroutine: no frame of ours per socket.
        if scope["type"] != "websocket":
            return self.app(scope, receive, send)
        view = self.views.get(scope["path"])
        if view is not None:
            return view(scope, receive, send)
        scope[SEND_KEY] = send
        return self.app(scope, receive, send)


def install(
    app: Quart,
    registry: Registry | None = None,
    *,
    views: Mapping[str, ASGIApp] | None = None,
    **options: Any,
) -> Registry:
    """Put ``GroupsMiddleware`` on ``app.asgi_app`` and run ``registry`` while the app serves.

    ``views`` maps WebSocket paths to ``View.as_asgi()`` apps. ``options`` go to
    ``GroupsMiddleware`` as they are; its ``sessions`` default to Quart's own cookie as
    configured in ``app.config`` (set ``SECRET_KEY`` first), and quart-auth's ``QUART_AUTH``
    cookie (``{"auth_id": ...}`` for the user loader) when ``QuartAuth(app)`` came first.
    The registry starts before the app's other ``before_serving`` functions and closes after
    its ``after_serving`` ones.
    Returns the registry.
    """
    registry = registry if registry is not None else Registry()
    if options.get("sessions") is None:
        options["sessions"] = QuartSessionCookie.from_app(app)
        if "QUART_AUTH" in app.extensions:  # quart-auth's own cookie, not the session
            options["sessions"] = [QuartAuthCookie.from_app(app), options["sessions"]]
    inner = _Front(cast(ASGIApp, app.asgi_app), views or {})
    app.asgi_app = GroupsMiddleware(inner, registry, **options)  # type: ignore[method-assign,assignment]
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


def login_required(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R | None]]:
    """Refuse anonymous users at the handshake (HTTP 403) in an ``@app.websocket`` handler,
    through the core's ``reject``, as a ``WsView`` with ``login_required`` does."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        if current_user().is_authenticated:
            return await handler(*args, **kwargs)
        scope = cast(Scope, websocket.scope)
        send = scope.get(SEND_KEY)
        if send is not None:
            await reject(scope, send, 403, "Forbidden: login required")
        else:  # not installed: a close before accept, which the server answers with 403
            await websocket.close(codes.POLICY_VIOLATION, "login required")
        return None

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
    joining = groups_to_join(user, groups, user_groups=user_groups)
    async with current_registry().attached(asgi_send(ws), user, joining) as conn:
        cast(dict[str, Any], ws.scope)[CONNECTION_KEY] = conn  # a lapsed credential: 4401
        yield conn
