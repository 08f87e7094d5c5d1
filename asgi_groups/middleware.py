"""``GroupsMiddleware``: Origin check, session cookie → session → user, registry in the scope.

Wraps any ASGI app. On a websocket scope it refuses a forbidden Origin with HTTP 403 before the
app runs, then sets ``user``, ``session`` and ``asgi_groups.registry`` in the scope (in place,
as Starlette's own middlewares do: no copy per socket). HTTP and lifespan pass through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from . import codes
from .origin import OriginPolicy
from .registry import Registry
from .request import Headers, Request
from .types import ASGIApp, Receive, Scope, Send, Session, SessionCodec, UserLike, UserLoader
from .users import ANONYMOUS

__all__ = ["CONNECTION_KEY", "REGISTRY_KEY", "GroupsMiddleware", "reject"]

logger = logging.getLogger("asgi_groups.middleware")

REGISTRY_KEY = "asgi_groups.registry"
CONNECTION_KEY = "asgi_groups.connection"


async def reject(scope: Scope, send: Send, status: int, detail: str) -> None:
    """Refuse a handshake: an HTTP response where the server supports it, else a plain 403."""
    if "websocket.http.response" in scope.get("extensions", {}) or {}:
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


class _Live:
    """A socket the revalidator watches."""

    __slots__ = ("codec", "cookie", "scope", "user_id")

    def __init__(self, scope: Scope, codec: SessionCodec | None, cookie: str | None, user_id: Any):
        self.scope = scope
        self.codec = codec
        self.cookie = cookie
        self.user_id = user_id


class GroupsMiddleware:
    """Authenticate WebSocket handshakes from the host app's own session cookie.

    ``sessions``: one codec or several tried in order (e.g. ``StarletteSessionCookie(secret)``);
    if ``scope["session"]`` is already set (Starlette's ``SessionMiddleware`` ran first) it is used.
    ``users``: an object with ``async load(session)`` or an async callable ``(session) -> user``.
    ``allowed_origins``: see :class:`~asgi_groups.origin.OriginPolicy` (default: same origin).
    ``revalidate_every``: seconds between re-checks of open sockets' sessions and users; a socket
    whose cookie expired or whose user is gone or inactive is closed with 4401.
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
        self._live: dict[int, _Live] = {}
        self._revalidator: asyncio.Task[None] | None = None
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        admitted = await self._admit(scope, send)
        if admitted is None:
            return
        user, codec, cookie = admitted
        if self.revalidate_every is None or not user.is_authenticated:
            await self.app(scope, receive, send)
            return
        key = id(scope)
        self._live[key] = _Live(scope, codec, cookie, user.id)
        self._ensure_revalidator()
        try:
            await self.app(scope, receive, send)
        finally:
            self._live.pop(key, None)

    async def _admit(
        self, scope: Scope, send: Send
    ) -> tuple[UserLike, SessionCodec | None, str | None] | None:
        """Check the Origin and resolve the user, setting ``session``, ``user`` and the
        registry in ``scope`` (in place, as Starlette's middlewares do); None when refused.

        A method of its own so that nothing it parses stays alive while the socket is open.
        """
        headers = Headers(scope.get("headers", ()))
        scheme = str(scope.get("scheme", "ws"))
        origin = headers.get("origin")
        if not self.origins.allows(origin, host=headers.get("host"), scheme=scheme):
            logger.warning("refused websocket from origin %r to %s", origin, scope.get("path"))
            await reject(scope, send, 403, "Forbidden: origin not allowed")
            return None
        session, codec, cookie = self._session(scope, headers)
        try:
            user = await self._user(session)
        except Exception:
            logger.exception("user loader failed; refusing the handshake")
            await reject(scope, send, 503, "Service unavailable: cannot load the user")
            return None
        await self._ensure_started()
        scope["session"] = session
        scope["user"] = user
        scope[REGISTRY_KEY] = self.registry
        return user, codec, cookie

    def _session(
        self, scope: Scope, headers: Headers
    ) -> tuple[Session, SessionCodec | None, str | None]:
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

    # -- revalidation ------------------------------------------------------------------------

    def _ensure_revalidator(self) -> None:
        if self._revalidator is None or self._revalidator.done():
            self._revalidator = asyncio.get_running_loop().create_task(self._revalidate_loop())

    async def _revalidate_loop(self) -> None:
        assert self.revalidate_every is not None
        while self._live:
            await asyncio.sleep(self.revalidate_every)
            with contextlib.suppress(Exception):
                await self.revalidate()

    async def revalidate(self) -> int:
        """Re-check every watched socket now; returns how many were closed."""
        closed = 0
        for live in list(self._live.values()):
            if await self._still_valid(live):
                continue
            conn = live.scope.get(CONNECTION_KEY)
            if conn is not None and conn.is_open:
                conn.close(codes.UNAUTHORIZED, "session no longer valid")
                closed += 1
        return closed

    async def _still_valid(self, live: _Live) -> bool:
        session: Session | None = live.scope.get("session")
        if live.codec is not None and live.cookie is not None:
            session = live.codec.decode(live.cookie)
        if not session:
            return False
        try:
            user = await self._user(session)
        except Exception:
            logger.exception("user loader failed during revalidation; keeping the socket")
            return True
        return user.is_authenticated and user.id == live.user_id
