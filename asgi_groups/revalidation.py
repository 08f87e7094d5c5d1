"""``Revalidator``: re-checks open sockets' credentials and users; closes lapsed ones with 4401.

A credential is read once at the handshake; a socket can then stay open for days. The
revalidator closes a socket whose credential expired (a token's ``exp``) within
``expiry_every`` seconds, and every ``every`` seconds re-decodes each watched socket's cookie
(expiry, key rotation) and reloads its user (deleted, deactivated, another account), while at
least one socket is watched. A failure to check is logged and the socket kept: an outage must
not log everyone out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import codes
from .credentials import Credential
from .types import ASGIApp, Receive, Scope, Send, Session, SessionCodec, UserLike

__all__ = ["CONNECTION_KEY", "DEFAULT_EXPIRY_EVERY", "EXPIRES_IN_KEY", "Revalidator", "Watched"]

logger = logging.getLogger("asgi_groups.revalidation")

CONNECTION_KEY = "asgi_groups.connection"
"""The scope entry where a view puts the socket's ``Connection`` (how a lapsed one is closed)."""

EXPIRES_IN_KEY = "asgi_groups.expires_in"
"""The scope entry of a socket whose credential lapses: a callable giving the seconds left (the
welcome and the refresh answer tell the client, so that it refreshes in time)."""

DEFAULT_EXPIRY_EVERY = 1.0
"""Seconds between checks of open sockets' credential expiry: a lapsed token is closed within it."""


class Watched:
    """One socket under watch: its scope, the cookie it came with, whose it was, until when.

    ``expires_at``: Unix time its credential lapses (None: never); ``recheck`` re-reads the
    credential's session (None when it no longer holds); the ``codec`` and ``cookie`` do the
    same for a session cookie. ``renew`` checks a fresh token sent on the socket (None: the
    credential cannot be renewed there).
    """

    __slots__ = ("codec", "cookie", "expires_at", "recheck", "renew", "scope", "user_id")

    def __init__(
        self,
        scope: Scope,
        codec: SessionCodec | None,
        cookie: str | None,
        user_id: Any,
        *,
        expires_at: float | None = None,
        recheck: Callable[[], Session | None] | None = None,
        renew: Callable[[str], Awaitable[Credential]] | None = None,
    ) -> None:
        self.scope = scope
        self.codec = codec
        self.cookie = cookie
        self.user_id = user_id
        self.expires_at = expires_at
        self.recheck = recheck
        self.renew = renew

    def expires_in(self, now: float) -> float | None:
        """Seconds until the credential lapses at Unix time ``now`` (None: never)."""
        return None if self.expires_at is None else max(0.0, round(self.expires_at - now, 3))


class Revalidator:
    """Every ``every`` seconds, re-check each watched socket; close those no longer valid.

    ``load_user(session)`` gives the session's user now (anonymous when none); the socket stays
    valid while that user is authenticated and has the id it had at the handshake. Without
    ``load_user`` (users from tokens), only the credential is re-checked. ``every=None``:
    expiry only. ``clock``: Unix time now (tests move it).
    """

    def __init__(
        self,
        every: float | None,
        load_user: Callable[[Session], Awaitable[UserLike]] | None,
        *,
        expiry_every: float = DEFAULT_EXPIRY_EVERY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.every = every
        self.expiry_every = expiry_every if every is None else min(every, expiry_every)
        self.clock = clock
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
        loop = asyncio.get_running_loop()
        next_full = None if self.every is None else loop.time() + self.every
        while self._watched:
            await asyncio.sleep(self.expiry_every)
            try:
                if next_full is not None and loop.time() >= next_full - 1e-3:
                    next_full = loop.time() + (self.every or 0)
                    await self.revalidate()
                else:
                    self.expire()
            except Exception:
                logger.exception("revalidation round failed; next one in %ss", self.expiry_every)

    def expire(self) -> int:
        """Close every watched socket whose credential has expired; returns how many."""
        now = self.clock()
        closed = 0
        for watched in list(self._watched.values()):
            if watched.expires_at is not None and now >= watched.expires_at:
                closed += self._close(watched, "credential expired")
        return closed

    @staticmethod
    def _close(watched: Watched, reason: str) -> int:
        conn = watched.scope.get(CONNECTION_KEY)
        if conn is not None and conn.is_open:
            conn.close(codes.UNAUTHORIZED, reason)
            return 1
        return 0

    async def revalidate(self) -> int:
        """Re-check every watched socket now; returns how many were closed."""
        closed = self.expire()
        for watched in list(self._watched.values()):
            try:
                valid = await self._still_valid(watched)
            except Exception:
                logger.exception(
                    "could not revalidate the socket of user %r; keeping it", watched.user_id
                )
                continue
            if not valid:
                closed += self._close(watched, "session no longer valid")
        return closed

    async def _still_valid(self, watched: Watched) -> bool:
        session: Session | None = watched.scope.get("session")
        if watched.recheck is not None:
            session = watched.recheck()
        elif watched.codec is not None and watched.cookie is not None:
            session = watched.codec.decode(watched.cookie)
        if not session:
            return False
        if self._load_user is None:
            return True
        user = await self._load_user(session)
        return user.is_authenticated and str(user.id) == str(watched.user_id)  # ids as strings
