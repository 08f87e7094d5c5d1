"""``Revalidator``: re-checks open sockets' sessions and users on a timer; closes lapsed ones 4401.

A session cookie is read once at the handshake; a socket can then stay open for days. The
revalidator re-decodes each watched socket's cookie (expiry, key rotation) and reloads its user
(deleted, deactivated, another account) every ``every`` seconds, while at least one socket is
watched. A failure to check is logged and the socket kept: an outage must not log everyone out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from . import codes
from .types import ASGIApp, Receive, Scope, Send, Session, SessionCodec, UserLike

__all__ = ["CONNECTION_KEY", "Revalidator", "Watched"]

logger = logging.getLogger("asgi_groups.revalidation")

CONNECTION_KEY = "asgi_groups.connection"
"""The scope entry where a view puts the socket's ``Connection`` (how a lapsed one is closed)."""


class Watched:
    """One socket under watch: its scope, the cookie it came with, and whose it was."""

    __slots__ = ("codec", "cookie", "scope", "user_id")

    def __init__(
        self, scope: Scope, codec: SessionCodec | None, cookie: str | None, user_id: Any
    ) -> None:
        self.scope = scope
        self.codec = codec
        self.cookie = cookie
        self.user_id = user_id


class Revalidator:
    """Every ``every`` seconds, re-check each watched socket; close those no longer valid.

    ``load_user(session)`` gives the session's user now (anonymous when none); the socket stays
    valid while that user is authenticated and has the id it had at the handshake.
    """

    def __init__(self, every: float, load_user: Callable[[Session], Awaitable[UserLike]]) -> None:
        self.every = every
        self._load_user = load_user
        self._watched: dict[int, Watched] = {}
        self._task: asyncio.Task[None] | None = None

    async def serve(
        self, watched: Watched, app: ASGIApp, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Run ``app`` for one socket, watched for as long as the app runs."""
        key = id(watched)
        self._watched[key] = watched
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            await app(scope, receive, send)
        finally:
            del self._watched[key]

    async def _run(self) -> None:
        while self._watched:
            await asyncio.sleep(self.every)
            try:
                await self.revalidate()
            except Exception:
                logger.exception("revalidation round failed; next one in %ss", self.every)

    async def revalidate(self) -> int:
        """Re-check every watched socket now; returns how many were closed."""
        closed = 0
        for watched in list(self._watched.values()):
            try:
                valid = await self._still_valid(watched)
            except Exception:
                logger.exception(
                    "could not revalidate the socket of user %r; keeping it", watched.user_id
                )
                continue
            if valid:
                continue
            conn = watched.scope.get(CONNECTION_KEY)
            if conn is not None and conn.is_open:
                conn.close(codes.UNAUTHORIZED, "session no longer valid")
                closed += 1
        return closed

    async def _still_valid(self, watched: Watched) -> bool:
        session: Session | None = watched.scope.get("session")
        if watched.codec is not None and watched.cookie is not None:
            session = watched.codec.decode(watched.cookie)
        if not session:
            return False
        user = await self._load_user(session)
        return user.is_authenticated and str(user.id) == str(watched.user_id)  # ids as strings
