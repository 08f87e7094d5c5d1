"""``GroupsMiddleware``: Origin check, session cookie → session → user, registry in the scope.

Wraps any ASGI app. On a websocket scope it refuses a forbidden Origin with HTTP 403 before the
app runs, then sets ``user``, ``session`` and ``asgi_groups.registry`` in the scope (in place,
as Starlette's own middlewares do: no copy per socket). HTTP and lifespan pass through untouched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

from asgiref.sync import markcoroutinefunction

from . import codes
from .origin import OriginPolicy
from .registry import Registry
from .request import Headers, Request
from .revalidation import CONNECTION_KEY, Revalidator, Watched
from .types import ASGIApp, Receive, Scope, Send, Session, SessionCodec, UserLike, UserLoader
from .users import ANONYMOUS

__all__ = ["CONNECTION_KEY", "REGISTRY_KEY", "GroupsMiddleware", "reject"]

logger = logging.getLogger("asgi_groups.middleware")
#: One INFO line per refused handshake, on a logger of its own (operators tune it apart).
refusals = logging.getLogger("asgi_groups.refusals")

REGISTRY_KEY = "asgi_groups.registry"


class _Admitted:
    """A socket let in that the revalidator need not watch."""

    __slots__ = ()


ADMITTED = _Admitted()


def _reason(status: int) -> str:
    """The bounded reason a refusal is counted under, from its HTTP status."""
    if status in (401, 403):
        return "auth"
    return "limit" if status == 429 else "error"


async def reject(
    scope: Scope,
    send: Send,
    status: int,
    detail: str,
    *,
    reason: str | None = None,
    note: str = "",
    registry: Registry | None = None,
) -> None:
    """Refuse a handshake: an HTTP response where the server supports it, else a plain 403.

    The one refusal path of the library, views and adapters alike: a client sees HTTP
    ``status`` (with ``detail`` as the body), or, on a server without the
    ``websocket.http.response`` extension, a close before accept, which servers answer with 403.
    A client that has already gone away is not an error (a DEBUG line). Each refusal is one
    INFO line (``note`` adds to it; never a credential) and is counted by ``reason`` (origin,
    auth, limit, error; default: from ``status``) on ``registry``, else the scope's, if any.
    """
    reason = reason or _reason(status)
    if registry is None:
        registry = scope.get(REGISTRY_KEY)
    if isinstance(registry, Registry):
        counts = registry.refused_handshakes
        counts[reason] = counts.get(reason, 0) + 1
    refusals.info(
        "refused websocket handshake to %s (%s): HTTP %d%s",
        scope.get("path"),
        reason,
        status,
        note,
    )
    try:
        if "websocket.http.response" in (scope.get("extensions") or {}):
            body = detail.encode()
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": codes.POLICY_VIOLATION})
    except OSError as exc:  # the client went away first (ASGI servers raise an OSError)
        logger.debug("refusal (%d) not sent, the client went away (%r)", status, exc)


class GroupsMiddleware:
    """Authenticate WebSocket handshakes from the host app's own session cookie.

    ``sessions``: one codec or several tried in order (e.g. ``StarletteSessionCookie(secret)``);
    if ``scope["session"]`` is already set (Starlette's ``SessionMiddleware`` ran first) it is used.
    ``users``: an object with ``async load(session)`` or an async callable ``(session) -> user``;
    without one, a ``scope["user"]`` set by an outer middleware (e.g. Starlette's
    ``AuthenticationMiddleware``) is kept, else the user is anonymous.
    ``allowed_origins``: see :class:`~asgi_groups.origin.OriginPolicy` (default: same origin).
    ``revalidate_every``: seconds between re-checks of open sockets' sessions and users (needs
    ``users``); a socket whose cookie expired or whose user is gone or inactive is closed with 4401.

    Served by hypercorn on Python 3.11 as the outermost app, name it ``asgi:module:app``
    (hypercorn there cannot tell that the middleware is an ASGI 3 app; 3.12+ and every other
    server can). Inside a framework (``install``) nothing is needed.
    """

    def __init__(
        self,
        app: ASGIApp,
        registry: Registry,
        sessions: SessionCodec | Sequence[SessionCodec] | None = None,
        users: UserLoader | Any | None = None,
        allowed_origins: Iterable[str] | str | None = None,
        *,
        allow_missing_origin: bool = False,
        revalidate_every: float | None = None,
    ) -> None:
        self.app = app
        self.registry = registry
        if sessions is None:
            self.codecs: list[SessionCodec] = []
        elif isinstance(sessions, Sequence):
            self.codecs = list(sessions)
        else:
            self.codecs = [sessions]
        self._load = self._loader(users)
        self.origins = OriginPolicy(allowed_origins, allow_missing=allow_missing_origin)
        self.revalidate_every = revalidate_every
        self.revalidator: Revalidator | None = None
        if revalidate_every is not None and self._load is not None:
            self.revalidator = Revalidator(revalidate_every, self._user)
        self._start_lock: asyncio.Lock | None = None

    @staticmethod
    def _loader(users: Any) -> UserLoader | None:
        if users is None:
            return None
        load = getattr(users, "load", None)
        if callable(load):
            return load  # type: ignore[no-any-return]
        if callable(users):
            return users  # type: ignore[no-any-return]
        raise TypeError("users must have an async load(session) method or be an async callable")

    @markcoroutinefunction
    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing back a coroutine: HTTP and lifespan pass straight through,
        # and a view served directly runs the handshake inside its own coroutine, so that an
        # open socket keeps one frame. Marked so that servers see an ASGI 3 app (hypercorn on
        # Python 3.11 cannot see the mark: name the app ``asgi:module:app`` there).
        if scope["type"] != "websocket":
            return self.app(scope, receive, send)
        if self.revalidator is None:
            admitted = getattr(self.app, "admitted", None)
            if admitted is not None:
                fused = admitted(self._admit_socket, self.registry, scope, receive, send)
                if fused is not None:
                    return fused  # type: ignore[no-any-return]
        return self._websocket(scope, receive, send)

    async def _admit_socket(self, scope: Scope, send: Send) -> bool:
        return await self._handshake(scope, send) is not None

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The handshake, then the app, for any app: this small frame stays while it serves."""
        watched = await self._handshake(scope, send)
        if watched is None:
            return
        if isinstance(watched, Watched):
            assert self.revalidator is not None
            await self.revalidator.serve(watched, self.app, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _handshake(self, scope: Scope, send: Send) -> Watched | _Admitted | None:
        """Check the Origin, find the session and load its user, and admit the socket.

        None when refused; else what the revalidator is to watch (``ADMITTED``: nothing).
        """
        headers = Headers(scope.get("headers", ()))
        origin = headers.get("origin")
        scheme = str(scope.get("scheme", "ws"))
        if not self.origins.allows(origin, host=headers.get("host"), scheme=scheme):
            note = f", origin {origin!r} not allowed"
            await reject(
                scope,
                send,
                403,
                "Forbidden: origin not allowed",
                reason="origin",
                note=note,
                registry=self.registry,
            )
            return None
        session, codec, cookie = self._session(scope)
        try:
            user = await self._user(session)
        except Exception:
            logger.exception("user loader failed; refusing the handshake")
            await reject(
                scope,
                send,
                503,
                "Service unavailable: cannot load the user",
                reason="error",
                registry=self.registry,
            )
            return None
        await self._ensure_started()
        self._admit(scope, session, user)
        if self.revalidator is None or not user.is_authenticated:
            return ADMITTED
        return Watched(scope, codec, cookie, user.id)

    def _admit(self, scope: Scope, session: Session, user: UserLike) -> None:
        """Hand the app what the handshake found, in ``scope`` (in place, as Starlette's
        middlewares do). A user an outer middleware set is kept when there is no loader."""
        scope["session"] = session
        if self._load is not None or scope.get("user") is None:
            scope["user"] = user
        scope[REGISTRY_KEY] = self.registry

    def _session(self, scope: Scope) -> tuple[Session, SessionCodec | None, str | None]:
        existing = scope.get("session")
        if isinstance(existing, dict) and existing:
            return existing, None, None
        if not self.codecs:
            return {}, None, None
        cookies = Request(scope).cookies
        for codec in self.codecs:
            value = cookies.get(codec.cookie_name)
            decoded = codec.decode(value) if value is not None else None
            if decoded is not None:
                return decoded, codec, value
        return {}, None, None

    async def _user(self, session: Session) -> UserLike:
        if self._load is None or not session:
            return ANONYMOUS
        user = await self._load(session)
        if user is None or not user.is_authenticated:
            return ANONYMOUS
        return user

    async def _ensure_started(self) -> None:
        if self.registry.started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if not self.registry.started:
                await self.registry.start()

    async def revalidate(self) -> int:
        """Re-check every watched socket now; returns how many were closed."""
        return 0 if self.revalidator is None else await self.revalidator.revalidate()
