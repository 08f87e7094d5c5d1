"""``GroupsMiddleware``: Origin check, credential → session → user, registry in the scope.

Wraps any ASGI app. On a websocket scope it refuses a forbidden Origin with HTTP 403 before the
app runs (a missing Origin only for ambient credentials: cookies), then sets ``user``,
``session`` and ``asgi_groups.registry`` in the scope (in place, as Starlette's own middlewares
do: no copy per socket). HTTP and lifespan pass through untouched.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from asgiref.sync import markcoroutinefunction

from . import codes
from .credentials import (
    MAX_TOKEN_LENGTH,
    Authenticator,
    Credential,
    InvalidCredential,
    SessionCookies,
    authenticate,
)
from .origin import OriginPolicy
from .registry import Registry
from .request import Headers
from .revalidation import (
    CONNECTION_KEY,
    DEFAULT_EXPIRY_EVERY,
    EXPIRES_IN_KEY,
    Revalidator,
    Watched,
)
from .stream import REFRESH, REFRESHED, error_frame, protocol_frame, request_id_of
from .types import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    Session,
    SessionCodec,
    UserLike,
    UserLoader,
)
from .users import ANONYMOUS, UserShapeError, as_user

__all__ = ["CONNECTION_KEY", "REGISTRY_KEY", "SUBPROTOCOL_KEY", "GroupsMiddleware", "reject"]

logger = logging.getLogger("asgi_groups.middleware")
#: One INFO line per refused handshake, on a logger of its own (operators tune it apart).
refusals = logging.getLogger("asgi_groups.refusals")

REGISTRY_KEY = "asgi_groups.registry"
#: Handshakes checked at once by one middleware; more wait (see ``GroupsMiddleware``).
DEFAULT_MAX_HANDSHAKES = 64
#: Seconds a handshake may wait for its turn before it is refused with 503.
DEFAULT_HANDSHAKE_WAIT = 10.0
#: Longest text frame read as a possible refresh frame (a token and a little JSON around it).
MAX_REFRESH_FRAME = MAX_TOKEN_LENGTH + 256
SUBPROTOCOL_KEY = "asgi_groups.token_subprotocol"
"""The scope entry naming the offered subprotocol that carried the socket's token."""


def _choosing_subprotocol(send: Send, scope: Scope, token_protocol: str) -> Send:
    """A ``send`` that accepts with a subprotocol the client offered when the app names none:
    browsers fail a socket whose offered subprotocols all go unanswered. The client's other
    offer is preferred; the token's own entry is echoed only when it offered nothing else."""

    async def choosing(message: Message) -> None:
        if message["type"] == "websocket.accept" and not message.get("subprotocol"):
            offered = list(scope.get("subprotocols") or ())
            message = {**message, "subprotocol": offered[0] if offered else token_protocol}
        await send(message)

    return choosing


class _Admitted:
    """A socket let in that the revalidator need not watch."""

    __slots__ = ()


ADMITTED = _Admitted()


#: Set in the task of a socket refused with an HTTP response (see ``_QuietRefusal``).
_refused_with_response: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "asgi_groups_refused_with_response", default=False
)


class _QuietRefusal(logging.Filter):
    """Drops uvicorn's "returned without completing handshake" ERROR for a socket this library
    refused with an HTTP response: its websockets-sansio protocol logs it for every such
    refusal although the client got the status (the refusal has its own INFO line)."""

    MESSAGE = "ASGI callable returned without completing handshake"

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_refused_with_response.get() and record.getMessage().startswith(self.MESSAGE))


_QUIET = _QuietRefusal()


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
            _refused_with_response.set(True)
            server_log = logging.getLogger("uvicorn.error")
            if _QUIET not in server_log.filters:
                server_log.addFilter(_QUIET)
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
    ``auth``: authenticators tried in order before the session cookies (``BearerToken``,
    ``QueryToken``, ``SubprotocolToken``, ``CookieToken`` with a ``JwtVerifier``, ...); a bad
    token is refused (403), an expired one closes its socket with 4401 within ``expiry_every``
    seconds (``clock``: Unix time now). A client with an explicit token (header, query,
    subprotocol) may omit the Origin header; with a cookie or no credential it may not.
    ``max_handshakes``: handshakes checked at once (origin, credential, user load); more wait
    their turn, so a reconnect storm slows new sockets instead of starving open ones; one
    that waits over ``handshake_wait`` seconds is refused with 503 (``None``: no limit).

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
        auth: Authenticator | Sequence[Authenticator] | None = None,
        expiry_every: float = DEFAULT_EXPIRY_EVERY,
        clock: Callable[[], float] = time.time,
        max_handshakes: int | None = DEFAULT_MAX_HANDSHAKES,
        handshake_wait: float = DEFAULT_HANDSHAKE_WAIT,
    ) -> None:
        if max_handshakes is not None and max_handshakes < 1:
            raise ValueError("max_handshakes must be at least 1 (or None: no limit)")
        self.app = app
        self.registry = registry
        if sessions is None:
            self.codecs: list[SessionCodec] = []
        elif isinstance(sessions, Sequence):
            self.codecs = list(sessions)
        else:
            self.codecs = [sessions]
        if auth is None:
            extra: list[Authenticator] = []
        elif isinstance(auth, Sequence):
            extra = list(auth)
        else:
            extra = [auth]
        for item in extra:
            if not isinstance(item, Authenticator):
                raise TypeError(
                    f"auth entries need an async authenticate(scope) method: {item!r} has none"
                )
        self.authenticators: list[Authenticator] = [*extra, SessionCookies(self.codecs)]
        self._load = self._loader(users)
        self.origins = OriginPolicy(allowed_origins, allow_missing=allow_missing_origin)
        self.revalidate_every = revalidate_every
        self.revalidator: Revalidator | None = None
        if extra:  # tokens expire: watch them even without a loader
            every = revalidate_every if self._load is not None else None
            load = self._user if self._load is not None else None
            self.revalidator = Revalidator(every, load, expiry_every=expiry_every, clock=clock)
        elif revalidate_every is not None and self._load is not None:
            self.revalidator = Revalidator(revalidate_every, self._user, clock=clock)
        self._start_lock: asyncio.Lock | None = None
        self.clock = clock
        self.max_handshakes = max_handshakes
        self.handshake_wait = handshake_wait
        self._gate: asyncio.Semaphore | None = None

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
        token_protocol = scope.get(SUBPROTOCOL_KEY)
        if token_protocol is not None:
            send = _choosing_subprotocol(send, scope, token_protocol)
        if isinstance(watched, Watched):
            assert self.revalidator is not None
            if watched.renew is not None:
                receive = self._refreshing(receive, watched)
            await self.revalidator.serve(watched, self.app, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _handshake(self, scope: Scope, send: Send) -> Watched | _Admitted | None:
        """``_check`` the handshake, at most ``max_handshakes`` at once."""
        if self.max_handshakes is None:
            return await self._check(scope, send)
        gate = self._gate
        if gate is None:
            gate = self._gate = asyncio.Semaphore(self.max_handshakes)
        if gate.locked():  # a storm: wait a turn, within a bound
            try:
                async with asyncio.timeout(self.handshake_wait):
                    await gate.acquire()
            except TimeoutError:
                await reject(
                    scope,
                    send,
                    503,
                    "Service unavailable: too many connections opening; retry",
                    reason="limit",
                    note=f", over {self.max_handshakes} handshakes waiting {self.handshake_wait}s",
                    registry=self.registry,
                )
                return None
        else:
            await gate.acquire()
        try:
            return await self._check(scope, send)
        finally:
            gate.release()

    async def _check(self, scope: Scope, send: Send) -> Watched | _Admitted | None:
        """Check the Origin, find the session and load its user, and admit the socket.

        None when refused; else what the revalidator is to watch (``ADMITTED``: nothing).
        """
        headers = Headers(scope.get("headers", ()))
        origin = headers.get("origin")
        scheme = str(scope.get("scheme", "ws"))
        checked = origin is not None or self.origins.allow_missing
        if checked and not self.origins.allows(origin, host=headers.get("host"), scheme=scheme):
            await self._refuse_origin(scope, send, f", origin {origin!r} not allowed")
            return None
        try:
            credential = await authenticate(self.authenticators, scope)
        except InvalidCredential as exc:
            await reject(
                scope,
                send,
                403,
                "Forbidden: invalid credential",
                reason="auth",
                note=f", {exc}",
                registry=self.registry,
            )
            return None
        if not checked and (credential is None or credential.ambient):
            note = ", no Origin header (allowed only with an explicit token, not a cookie)"
            await self._refuse_origin(scope, send, note)
            return None
        session: Session = credential.session if credential is not None else {}
        try:
            user = await self._credential_user(credential)
        except UserShapeError as exc:
            logger.error("refusing the handshake: %s", exc)
            await reject(
                scope,
                send,
                503,
                f"Service unavailable: {exc}",
                reason="error",
                registry=self.registry,
            )
            return None
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
        if credential is not None and credential.subprotocol is not None:
            scope[SUBPROTOCOL_KEY] = credential.subprotocol
        if self.revalidator is None or not user.is_authenticated or credential is None:
            return ADMITTED
        if credential.expires_at is None and self.revalidator.every is None:
            return ADMITTED
        watched = Watched(
            scope,
            None,
            None,
            user.id,
            expires_at=credential.expires_at,
            recheck=credential.recheck,
            renew=credential.renew,
        )
        if watched.expires_at is not None:
            scope[EXPIRES_IN_KEY] = lambda: watched.expires_in(self.clock())
        return watched

    def _refreshing(self, receive: Receive, watched: Watched) -> Receive:
        """A ``receive`` that takes the socket's refresh frames (``ag.refresh``) out of the
        stream and renews its credential; every other message goes to the app unchanged."""

        async def receiving() -> Message:
            while True:
                message = await receive()
                text = message.get("text") if message["type"] == "websocket.receive" else None
                if (
                    text is None
                    or len(text) > MAX_REFRESH_FRAME
                    or REFRESH not in text
                    or not await self._refresh(watched, text)
                ):
                    return message

        return receiving

    async def _refresh(self, watched: Watched, text: str) -> bool:
        """Renew ``watched``'s credential from a refresh frame; False if ``text`` is not one.

        The token must be valid and name the same user; then the socket lives until the new
        expiry (``ag.refreshed``). Otherwise the old expiry stands (``ag.error``
        "refresh_refused"): a bad refresh never closes a socket that is still valid.
        """
        try:
            frame = json.loads(text)
        except ValueError:
            return False
        if not isinstance(frame, dict) or frame.get("type") != REFRESH:
            return False
        request_id = request_id_of(frame)
        token = frame.get("token")
        assert watched.renew is not None
        try:
            if not isinstance(token, str):
                raise InvalidCredential("a refresh frame needs a string 'token'")
            credential = await watched.renew(token)
            user = await self._credential_user(credential)
            if not user.is_authenticated or str(user.id) != str(watched.user_id):
                raise InvalidCredential("the token names another user")
        except InvalidCredential as exc:
            logger.info("refusing a refresh of user %s's socket: %s", watched.user_id, exc)
            reply = error_frame("refresh_refused", str(exc), request_id)
        except Exception:
            logger.exception("refresh of user %s's socket failed", watched.user_id)
            reply = error_frame("refresh_failed", "cannot check the token now", request_id)
        else:
            watched.expires_at = credential.expires_at
            watched.recheck = credential.recheck
            watched.scope["session"] = credential.session
            body: dict[str, Any] = {
                "type": REFRESHED,
                "expires_at": credential.expires_at,
                "expires_in": watched.expires_in(self.clock()),
            }
            if request_id is not None:
                body["id"] = request_id
            reply = protocol_frame(body)
        conn = watched.scope.get(CONNECTION_KEY)
        if conn is not None:
            conn.deliver(reply)
        return True

    async def _refuse_origin(self, scope: Scope, send: Send, note: str) -> None:
        await reject(
            scope,
            send,
            403,
            "Forbidden: origin not allowed",
            reason="origin",
            note=note,
            registry=self.registry,
        )

    async def _credential_user(self, credential: Credential | None) -> UserLike:
        """The user a credential names: through ``users`` when given, else the one the
        authenticator recognised (a token's claims), else anonymous."""
        if credential is None:
            return ANONYMOUS
        if self._load is not None:
            return await self._user(credential.session)
        if credential.user is None:
            return ANONYMOUS
        user = as_user(credential.user)
        return user if user.is_authenticated else ANONYMOUS

    def _admit(self, scope: Scope, session: Session, user: UserLike) -> None:
        """Hand the app what the handshake found, in ``scope`` (in place, as Starlette's
        middlewares do). A user an outer middleware set is kept when there is no loader."""
        scope["session"] = session
        outer = scope.get("user")
        if self._load is not None or outer is None or user.is_authenticated:
            scope["user"] = user
        elif not isinstance(outer, UserLike):  # e.g. Starlette's SimpleUser: no id, no groups
            try:
                scope["user"] = as_user(outer)
            except UserShapeError as exc:
                logger.warning("the user an outer middleware set is not usable: %s", exc)
                scope["user"] = ANONYMOUS
        scope[REGISTRY_KEY] = self.registry

    async def _user(self, session: Session) -> UserLike:
        if self._load is None or not session:
            return ANONYMOUS
        loaded = await self._load(session)
        if loaded is None:
            return ANONYMOUS
        user = as_user(loaded)
        return user if user.is_authenticated else ANONYMOUS

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
