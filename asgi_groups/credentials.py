"""Authenticators: "from this connection's scope, who is it, and until when?".

An :class:`Authenticator` reads one kind of credential from a WebSocket scope and returns a
:class:`Credential` (the session or claims, the expiry, whether it is ambient), ``None`` when its
credential is absent, or raises :class:`InvalidCredential` when one is present but bad. Built-ins:
the host framework's session cookies, a bearer token from the ``Authorization`` header, a token
from a query parameter or from ``Sec-WebSocket-Protocol``, a token in a cookie, and quart-auth's
``QUART_AUTH`` cookie. Tokens are checked by a :class:`TokenVerifier`, e.g.
:class:`~asgi_groups.jwt.JwtVerifier`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from itsdangerous import BadData, URLSafeTimedSerializer

from .errors import AsgiGroupsError
from .request import Headers, QueryParams, parse_cookies
from .sessions import SecretKeys, _key_list
from .types import Scope, Session, SessionCodec, UserLike

__all__ = [
    "DEFAULT_QUERY_PARAMETER",
    "DEFAULT_SUBPROTOCOL_PREFIX",
    "MAX_TOKEN_LENGTH",
    "QUART_AUTH_DURATION",
    "Authenticator",
    "BearerToken",
    "CookieToken",
    "Credential",
    "InvalidCredential",
    "QuartAuthCookie",
    "QueryToken",
    "SessionCookies",
    "SubprotocolToken",
    "TokenVerifier",
    "authenticate",
    "cookie_value",
]

MAX_TOKEN_LENGTH = 8192
"""Longest token read from a header, query or subprotocol; a longer one is invalid (not parsed)."""

DEFAULT_QUERY_PARAMETER = "access_token"
DEFAULT_SUBPROTOCOL_PREFIX = "bearer."
QUART_AUTH_DURATION = 365 * 24 * 60 * 60
"""quart-auth's default ``QUART_AUTH_DURATION`` (one year)."""


class InvalidCredential(AsgiGroupsError):
    """A credential was presented but is bad (tampered, expired, malformed): refuse, do not
    fall back to anonymous. The message names what was wrong, never the credential."""


@dataclass(frozen=True, slots=True)
class Credential:
    """Who a connection is, and until when.

    ``session``: what the user loader receives (a decoded session, or a token's claims).
    ``user``: a user the authenticator recognised itself (used when there is no ``users=``).
    ``expires_at``: Unix time when the credential lapses (the socket is closed 4401), or None.
    ``ambient``: sent by the browser on its own (a cookie): such a socket needs a same-site
    Origin. ``recheck``: re-reads the credential later (a cookie's expiry, key rotation).
    ``subprotocol``: the offered subprotocol that carried the token (never echoed back).
    ``renew``: checks a fresh token of the same kind, sent on the open socket (a refresh
    frame), and gives its credential; None when the credential cannot be renewed (cookies).
    """

    session: Session
    user: UserLike | None = None
    expires_at: float | None = None
    ambient: bool = False
    source: str = ""
    recheck: Callable[[], Session | None] | None = field(default=None, repr=False)
    subprotocol: str | None = None
    renew: Callable[[str], Awaitable[Credential]] | None = field(default=None, repr=False)


@runtime_checkable
class Authenticator(Protocol):
    """Reads one kind of credential from a scope: a ``Credential``, None when absent, or
    ``InvalidCredential`` when present but bad."""

    async def authenticate(self, scope: Scope) -> Credential | None: ...


TokenVerifier = Callable[[str], Credential | Awaitable[Credential]]
"""Checks a token: its ``Credential``, or ``InvalidCredential`` (e.g. ``JwtVerifier``)."""


async def _verify(verifier: TokenVerifier, token: str, source: str) -> Credential:
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidCredential(f"{source}: empty or over {MAX_TOKEN_LENGTH} characters")
    result = verifier(token)
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, Credential):
        raise TypeError(f"a token verifier must return a Credential, not {type(result).__name__}")
    return dataclasses.replace(result, renew=_renewer(verifier))


def _renewer(verifier: TokenVerifier) -> Callable[[str], Awaitable[Credential]]:
    """Checks a refreshed token with the verifier that checked the first one."""
    return lambda token: _verify(verifier, token, "refresh frame")


def cookie_value(scope: Scope, name: str) -> str | None:
    """Cookie ``name`` from the scope's ``Cookie`` header(s); the first one wins."""
    for header in Headers(scope.get("headers", ())).getlist("cookie"):
        value = parse_cookies(header).get(name)
        if value is not None:
            return value
    return None


class SessionCookies:
    """The host framework's signed session cookie(s), through session codecs (ambient).

    A session an outer middleware already decoded (``scope["session"]``, Starlette's
    ``SessionMiddleware`` running first) is used as it is.
    """

    def __init__(self, codecs: SessionCodec | Sequence[SessionCodec] = ()) -> None:
        self.codecs: list[SessionCodec] = list(codecs) if isinstance(codecs, Sequence) else [codecs]

    async def authenticate(self, scope: Scope) -> Credential | None:
        existing = scope.get("session")
        if isinstance(existing, dict) and existing:
            return Credential(existing, ambient=True, source="session")
        for codec in self.codecs:
            value = cookie_value(scope, codec.cookie_name)
            decoded = codec.decode(value) if value is not None else None
            if decoded is not None:
                return Credential(
                    decoded,
                    ambient=True,
                    source=f"cookie {codec.cookie_name}",
                    recheck=_rechecker(codec, value),  # type: ignore[arg-type]
                )
        return None


def _rechecker(codec: SessionCodec, value: str) -> Callable[[], Session | None]:
    return lambda: codec.decode(value)


class BearerToken:
    """``Authorization: Bearer <token>`` (explicit: no Origin needed), checked by ``verifier``."""

    def __init__(self, verifier: TokenVerifier, *, scheme: str = "Bearer") -> None:
        self.verifier = verifier
        self.scheme = scheme.lower()

    async def authenticate(self, scope: Scope) -> Credential | None:
        header = Headers(scope.get("headers", ())).get("authorization")
        if header is None:
            return None
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != self.scheme:
            return None
        return await _verify(self.verifier, token.strip(), "Authorization header")


class QueryToken:
    """A token in the query string (``?access_token=...``), as a browser can pass one."""

    def __init__(self, verifier: TokenVerifier, *, name: str = DEFAULT_QUERY_PARAMETER) -> None:
        self.verifier = verifier
        self.name = name

    async def authenticate(self, scope: Scope) -> Credential | None:
        query = scope.get("query_string", b"")
        if not query:
            return None
        token = QueryParams(query).get(self.name)
        if token is None:
            return None
        return await _verify(self.verifier, token, f"query parameter {self.name!r}")


class SubprotocolToken:
    """A token offered as a subprotocol ``bearer.<token>`` (browsers cannot set headers).

    The entry is taken out of ``scope["subprotocols"]`` so the app never echoes it; the client
    offers its real subprotocol beside it (``new WebSocket(url, ["chat", "bearer." + token])``).
    """

    def __init__(
        self, verifier: TokenVerifier, *, prefix: str = DEFAULT_SUBPROTOCOL_PREFIX
    ) -> None:
        self.verifier = verifier
        self.prefix = prefix

    async def authenticate(self, scope: Scope) -> Credential | None:
        offered = list(scope.get("subprotocols") or ())
        for entry in offered:
            if entry.startswith(self.prefix):
                scope["subprotocols"] = [p for p in offered if p != entry]
                credential = await _verify(
                    self.verifier, entry[len(self.prefix) :], "Sec-WebSocket-Protocol"
                )
                return dataclasses.replace(credential, subprotocol=entry)
        return None


class CookieToken:
    """A token in a cookie (e.g. an HttpOnly JWT cookie): ambient, so Origin is required."""

    def __init__(self, verifier: TokenVerifier, *, cookie_name: str) -> None:
        self.verifier = verifier
        self.cookie_name = cookie_name

    async def authenticate(self, scope: Scope) -> Credential | None:
        value = cookie_value(scope, self.cookie_name)
        if value is None:
            return None
        credential = await _verify(self.verifier, value, f"cookie {self.cookie_name!r}")
        return dataclasses.replace(credential, ambient=True)


class QuartAuthCookie:
    """quart-auth's ``QUART_AUTH`` cookie, decoded to ``{"auth_id": ...}`` for the user loader.

    Signed as quart-auth signs it: ``URLSafeTimedSerializer`` with salt ``"quart auth salt"``
    and SHA-512; keys ``SECRET_KEY_FALLBACKS`` + ``SECRET_KEY``. A bad cookie is no session.
    """

    def __init__(
        self,
        secret_keys: SecretKeys,
        *,
        cookie_name: str = "QUART_AUTH",
        salt: str = "quart auth salt",
        max_age: int | None = QUART_AUTH_DURATION,
    ) -> None:
        self.cookie_name = cookie_name
        self.max_age = max_age
        self._serializer = URLSafeTimedSerializer(
            _key_list(secret_keys), salt, signer_kwargs={"digest_method": hashlib.sha512}
        )

    @classmethod
    def from_app(cls, app: Any) -> QuartAuthCookie:
        """Keys, cookie name, salt and duration from a Quart app's config, as quart-auth does."""
        config: Mapping[str, Any] = app.config
        secret = config.get("SECRET_KEY")
        if not secret:
            raise ValueError("the app has no SECRET_KEY: quart-auth cannot have signed a cookie")
        return cls(
            [*(config.get("SECRET_KEY_FALLBACKS") or ()), secret],
            cookie_name=config.get("QUART_AUTH_COOKIE_NAME") or "QUART_AUTH",
            salt=config.get("QUART_AUTH_SALT") or "quart auth salt",
            max_age=config.get("QUART_AUTH_DURATION", QUART_AUTH_DURATION),
        )

    def decode(self, value: str) -> Session | None:
        try:
            auth_id = self._serializer.loads(value, max_age=self.max_age)
        except (BadData, ValueError, TypeError):
            return None
        return {"auth_id": str(auth_id)} if auth_id is not None else None

    def encode(self, session: Session) -> str:
        return str(self._serializer.dumps(session["auth_id"]))


async def authenticate(authenticators: Sequence[Authenticator], scope: Scope) -> Credential | None:
    """The first credential any of ``authenticators`` finds, in order (None: anonymous).

    ``InvalidCredential`` from one of them stops the search: a bad token is refused, not ignored.
    """
    for authenticator in authenticators:
        credential = await authenticator.authenticate(scope)
        if credential is not None:
            return credential
    return None
