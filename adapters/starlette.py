"""Starlette: one-call install, a registry lifespan, and helpers for WebSocket endpoints.

A ``WsView`` is a plain ASGI app, so Starlette routes it as it is::

    routes = [WebSocketRoute("/ws", ChatView.as_asgi()), Mount("/live", routes=[...])]
    app = Starlette(routes=routes, lifespan=lifespan(registry))
    app.add_middleware(GroupsMiddleware, registry=registry, sessions=..., users=...)

or, for an app that already exists, ``registry = install(app, sessions=..., users=...)``.
When Starlette's ``SessionMiddleware`` runs outside ``GroupsMiddleware``, the session it decoded
(``websocket.session``) is the one used. An endpoint refuses a socket by raising
``LoginRequired``: ``install`` answers it as every refusal of the library is answered (HTTP 403).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import WebSocketException
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketState

from asgi_groups import codes
from asgi_groups.connection import Connection
from asgi_groups.middleware import CONNECTION_KEY, REGISTRY_KEY, GroupsMiddleware, reject
from asgi_groups.registry import Registry
from asgi_groups.request import Request
from asgi_groups.sessions import FOURTEEN_DAYS, StarletteSessionCookie
from asgi_groups.types import UserLike
from asgi_groups.views import WsView, groups_to_join

from ._lifespan import LifespanFactory, compose

__all__ = [
    "STATE_KEY",
    "LoginRequired",
    "add_view",
    "current_registry",
    "current_user",
    "install",
    "joined",
    "lifespan",
    "refuse",
]

STATE_KEY = "asgi_groups_registry"
"""The ``app.state`` attribute that holds the registry (for HTTP handlers)."""

logger = logging.getLogger("asgi_groups.adapters")


def _session_middleware_cookie(app: Starlette) -> StarletteSessionCookie | None:
    """The cookie of a ``SessionMiddleware`` added to ``app``, read with its own options.

    ``install`` puts ``GroupsMiddleware`` outside it, where the session is not decoded yet.
    """
    from starlette.middleware.sessions import SessionMiddleware

    for middleware in app.user_middleware:
        if middleware.cls is not SessionMiddleware:  # type: ignore[comparison-overlap]
            continue
        options: dict[str, Any] = dict(middleware.kwargs)
        secret = options.get("secret_key", middleware.args[0] if middleware.args else None)
        if not secret:
            return None
        return StarletteSessionCookie(
            str(secret),
            cookie_name=options.get("session_cookie", "session"),
            max_age=options.get("max_age", FOURTEEN_DAYS),
        )
    return None


def _check_sessions(app: Starlette, options: dict[str, Any]) -> None:
    """Fill in ``sessions`` from the app's ``SessionMiddleware``, or say why users will be
    anonymous: a loader with nothing to load from is a misconfiguration, not a policy."""
    if options.get("sessions") is not None:
        return
    cookie = _session_middleware_cookie(app)
    if cookie is not None:
        options["sessions"] = cookie
        logger.warning(
            "install(): the app has SessionMiddleware but no sessions= was given; reading its "
            "cookie %r with its secret_key. Pass sessions=StarletteSessionCookie(secret_key) "
            "to say so explicitly",
            cookie.cookie_name,
        )
    elif options.get("users") is not None and not options.get("auth"):
        logger.warning(
            "install(users=...) without sessions= or auth=: nothing identifies a socket, so "
            "every user will be anonymous. Pass sessions=StarletteSessionCookie(secret_key) "
            "(or auth=[BearerToken(JwtVerifier(key))])"
        )


def lifespan(
    registry: Registry, inner: LifespanFactory[Starlette] | None = None
) -> LifespanFactory[Starlette]:
    """``Starlette(lifespan=lifespan(registry, app_lifespan))``: the registry runs around yours.

    The registry starts before ``inner`` and closes after it; ``inner``'s state passes through.
    """
    composed = compose(registry, inner)

    @contextlib.asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[Any]:
        setattr(app.state, STATE_KEY, registry)
        async with composed(app) as state:
            yield state

    setattr(run, STATE_KEY, registry)  # found by current_registry on a server without lifespan
    return run


class LoginRequired(WebSocketException):
    """Refuse the socket at the handshake: its user is not logged in.

    ``install`` answers it with the core's ``reject`` (HTTP 403, as a ``WsView`` with
    ``login_required`` does); elsewhere Starlette's own handler closes with 1008 before accept,
    which the server also answers with 403.
    """

    def __init__(self) -> None:
        super().__init__(code=codes.POLICY_VIOLATION, reason="login required")


async def refuse(websocket: WebSocket, exc: Exception) -> None:
    """The exception handler for ``LoginRequired``: refuse as the core does (HTTP 403)."""
    if websocket.application_state == WebSocketState.CONNECTING:
        await reject(websocket.scope, websocket.send, 403, "Forbidden: login required")
    elif websocket.application_state == WebSocketState.CONNECTED:
        await websocket.close(codes.POLICY_VIOLATION, "login required")


def install(app: Starlette, registry: Registry | None = None, **options: Any) -> Registry:
    """Add ``GroupsMiddleware`` to an existing app and run ``registry`` in its lifespan.

    The middleware goes innermost: it sees the user an ``AuthenticationMiddleware`` of the app
    set, and the session its ``SessionMiddleware`` decoded, whenever those were added.

    ``options`` go to ``GroupsMiddleware`` as they are (``sessions``, ``users``, ``auth``,
    ``allowed_origins``, ...); without ``sessions``, an app's ``SessionMiddleware`` cookie is
    read with its own secret (a warning says so). The app's own lifespan (``lifespan=`` or
    startup handlers) still runs, inside the registry's. ``LoginRequired`` is answered with
    HTTP 403. Call before the app starts serving; returns the registry.
    """
    registry = registry if registry is not None else Registry()
    if app.middleware_stack is not None:
        raise RuntimeError("install() before the app starts serving: its middleware is built")
    _check_sessions(app, options)
    # innermost, so that it sees what the app's own middleware (sessions, authentication) set
    app.user_middleware.append(Middleware(GroupsMiddleware, registry=registry, **options))
    app.add_exception_handler(LoginRequired, refuse)
    app.router.lifespan_context = compose(registry, app.router.lifespan_context)
    setattr(app.state, STATE_KEY, registry)
    return registry


def add_view(
    app: Starlette, path: str, view: type[WsView], *, name: str | None = None, **options: Any
) -> None:
    """Serve ``view`` at ``path`` (Starlette 1.x apps have no ``add_websocket_route``)."""
    app.router.routes.append(WebSocketRoute(path, view.as_asgi(**options), name=name))


def current_user(websocket: HTTPConnection) -> UserLike:
    """The user ``GroupsMiddleware`` recognised for this socket (anonymous when none)."""
    return Request(websocket.scope).user


def current_registry(conn: HTTPConnection) -> Registry:
    """The registry: from the socket's scope, else from ``app.state`` (HTTP handlers).

    On a server that runs no lifespan, ``app.state`` is filled on first use from the app's
    ``lifespan(registry)`` or its ``GroupsMiddleware``; the registry starts on its first use.
    """
    registry = conn.scope.get(REGISTRY_KEY)
    if registry is None:
        app = conn.app
        registry = getattr(app.state, STATE_KEY, None)
        if registry is None:
            registry = _declared_registry(app)
            if registry is not None:
                setattr(app.state, STATE_KEY, registry)
    if not isinstance(registry, Registry):
        raise RuntimeError("no registry: use install(app, ...) or lifespan(registry)")
    return registry


def _declared_registry(app: Starlette) -> Registry | None:
    """The registry of ``app``'s ``lifespan(registry)``, else of its ``GroupsMiddleware``."""
    registry = getattr(app.router.lifespan_context, STATE_KEY, None)
    if isinstance(registry, Registry):
        return registry
    for middleware in app.user_middleware:
        if middleware.cls is GroupsMiddleware:  # type: ignore[comparison-overlap]
            args = middleware.args
            found = middleware.kwargs.get("registry", args[0] if args else None)
            if isinstance(found, Registry):
                return found
    return None


@contextlib.asynccontextmanager
async def joined(
    websocket: WebSocket, groups: Iterable[str] = (), *, user_groups: bool = True
) -> AsyncIterator[Connection]:
    """Accept the socket and register it, in ``groups`` and the user's own; leave at the end.

    ``async with joined(websocket) as conn:`` then read with ``websocket.iter_text()``;
    the connection's frames go out through ``websocket.send``.
    """
    if websocket.application_state == WebSocketState.CONNECTING:
        await websocket.accept()
    user = current_user(websocket)
    joining = groups_to_join(user, groups, user_groups=user_groups)
    async with current_registry(websocket).attached(websocket.send, user, joining) as conn:
        websocket.scope[CONNECTION_KEY] = conn  # so a lapsed credential closes it (4401)
        yield conn
