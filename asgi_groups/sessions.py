"""Session cookie codecs: read (and write) the signed cookie the host framework already sets.

Every codec verifies with itsdangerous and turns any bad, tampered, expired or foreign cookie
into ``None``; it never raises on input and never logs the cookie's value.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import logging
import uuid
import zlib
from base64 import b64decode, b64encode
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from http.cookies import Morsel
from typing import Any, Literal, Protocol

from itsdangerous import BadData, TimestampSigner, URLSafeTimedSerializer

from asgi_groups.request import parse_cookies
from asgi_groups.types import Session

__all__ = [
    "CraxSessionCookie",
    "QuartSessionCookie",
    "SecretKeys",
    "SignedCookie",
    "StarletteSessionCookie",
    "read_cookie",
]

logger = logging.getLogger("asgi_groups.sessions")

SecretKeys = str | bytes | Sequence[str | bytes]
"""One secret, or a list oldest → newest: the last one signs, all of them verify."""

FOURTEEN_DAYS = 14 * 24 * 60 * 60
THIRTY_ONE_DAYS = 31 * 24 * 60 * 60

# Everything a malformed payload can raise on the way through base64, zlib, UTF-8 and JSON.
# binascii.Error, UnicodeError and json.JSONDecodeError are ValueErrors; the rest are not.
_DECODE_ERRORS = (
    BadData,
    ValueError,
    TypeError,
    binascii.Error,
    zlib.error,
    RecursionError,
    OverflowError,
)


def _key_list(secret_keys: SecretKeys) -> list[bytes]:
    """Normalise one key or a rotation list to itsdangerous' ``list[bytes]`` (newest last)."""
    items: Sequence[str | bytes] = (
        [secret_keys] if isinstance(secret_keys, str | bytes) else list(secret_keys)
    )
    keys = [k if isinstance(k, bytes) else str(k).encode("utf-8") for k in items]
    if not keys or not all(keys):
        raise ValueError("secret_keys must be a non-empty key or a list of non-empty keys")
    return keys


def _rejected(codec: object, exc: BaseException) -> None:
    # The exception type only: its message may quote the cookie.
    logger.debug("%s: session cookie rejected (%s)", type(codec).__name__, type(exc).__name__)


def _as_session(value: Any) -> Session | None:
    return value if isinstance(value, dict) else None


class StarletteSessionCookie:
    """Starlette / FastAPI ``SessionMiddleware``: ``TimestampSigner`` over base64 JSON."""

    def __init__(
        self,
        secret_keys: SecretKeys,
        *,
        cookie_name: str = "session",
        max_age: int | None = FOURTEEN_DAYS,
    ) -> None:
        self.cookie_name = cookie_name
        self.max_age = max_age
        self._signer = TimestampSigner(_key_list(secret_keys))

    def decode(self, value: str) -> Session | None:
        try:
            data = self._signer.unsign(value.encode("utf-8"), max_age=self.max_age)
            return _as_session(json.loads(b64decode(data)))
        except _DECODE_ERRORS as exc:
            _rejected(self, exc)
            return None

    def encode(self, session: Session) -> str:
        data = b64encode(json.dumps(session).encode("utf-8"))
        return self._signer.sign(data).decode("utf-8")


class _TaggedJSON:
    """Flask's tagged JSON (``flask.json.tag``), so Quart/Flask cookies decode without Flask.

    Tags: ``" t"`` tuple, ``" b"`` bytes, ``" u"`` UUID, ``" d"`` HTTP-date datetime,
    ``" m"`` markup (read back as ``str``), ``" di"`` a one-key dict whose key is a tag.
    """

    TAGS = frozenset({" t", " b", " u", " d", " m", " di"})

    def dumps(self, value: Any) -> str:
        return json.dumps(self._tag(value), separators=(",", ":"))

    def loads(self, value: str) -> Any:
        return self._untag(json.loads(value))

    def _tag(self, value: Any) -> Any:
        if isinstance(value, dict):
            if len(value) == 1 and next(iter(value)) in self.TAGS:
                key = next(iter(value))
                return {" di": {f"{key}__": self._tag(value[key])}}
            return {k: self._tag(v) for k, v in value.items()}
        if isinstance(value, tuple):
            return {" t": [self._tag(item) for item in value]}
        if isinstance(value, list):
            return [self._tag(item) for item in value]
        if isinstance(value, bytes):
            return {" b": b64encode(value).decode("ascii")}
        if callable(getattr(value, "__html__", None)):
            return {" m": str(value.__html__())}
        if isinstance(value, uuid.UUID):
            return {" u": value.hex}
        if isinstance(value, datetime):
            aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
            return {" d": format_datetime(aware, usegmt=True)}
        return value

    def _untag(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._untag(item) for item in value]
        if not isinstance(value, dict):
            return value
        value = {k: self._untag(v) for k, v in value.items()}
        if len(value) != 1:
            return value
        ((key, inner),) = value.items()
        if key == " t" and isinstance(inner, list):
            return tuple(inner)
        if key == " b" and isinstance(inner, str):
            return b64decode(inner)
        if key == " u" and isinstance(inner, str):
            return uuid.UUID(inner)
        if key == " d" and isinstance(inner, str):
            return _parse_http_date(inner)
        if key == " m" and isinstance(inner, str):
            return inner
        if key == " di" and isinstance(inner, dict) and len(inner) == 1:
            ((escaped, item),) = inner.items()
            return {escaped[:-2]: item}
        if key in self.TAGS:
            raise ValueError("malformed tagged value")
        return value


def _parse_http_date(value: str) -> datetime | None:
    """Like werkzeug's ``parse_date``: timezone-aware, UTC when unspecified, None if bad."""
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


class _HasConfig(Protocol):
    @property
    def config(self) -> Mapping[str, Any]: ...


class QuartSessionCookie:
    """Quart / Flask ``SecureCookieSessionInterface``: url-safe, maybe zlib, tagged JSON."""

    def __init__(
        self,
        secret_keys: SecretKeys,
        *,
        cookie_name: str = "session",
        max_age: int | None = THIRTY_ONE_DAYS,
    ) -> None:
        self.cookie_name = cookie_name
        self.max_age = max_age
        self._serializer = URLSafeTimedSerializer(
            _key_list(secret_keys),
            salt="cookie-session",
            serializer=_TaggedJSON(),
            signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha1},
        )

    @classmethod
    def from_app(cls, app: _HasConfig) -> QuartSessionCookie:
        """Read keys (``SECRET_KEY`` + ``SECRET_KEY_FALLBACKS``), cookie name and lifetime."""
        config = app.config
        secret = config.get("SECRET_KEY")
        if not secret:
            raise ValueError("the app has no SECRET_KEY: it cannot have signed session cookies")
        keys: list[str | bytes] = [*(config.get("SECRET_KEY_FALLBACKS") or ()), secret]
        lifetime = config.get("PERMANENT_SESSION_LIFETIME", THIRTY_ONE_DAYS)
        if isinstance(lifetime, timedelta):
            lifetime = lifetime.total_seconds()
        return cls(
            keys,
            cookie_name=config.get("SESSION_COOKIE_NAME") or "session",
            max_age=int(lifetime),
        )

    def decode(self, value: str) -> Session | None:
        try:
            return _as_session(self._serializer.loads(value, max_age=self.max_age))
        except _DECODE_ERRORS as exc:
            _rejected(self, exc)
            return None

    def encode(self, session: Session) -> str:
        return self._serializer.dumps(session)


class CraxSessionCookie:
    """Crax's ``session_id``: base64 of ``TimestampSigner.sign(f"{username}:{pk}")``.

    Decodes to ``{"username": ..., "user_id": pk}``; pk 0 (Crax's anonymous user) is no session.
    """

    def __init__(
        self,
        secret_keys: SecretKeys,
        *,
        cookie_name: str = "session_id",
        max_age: int | None = FOURTEEN_DAYS,
    ) -> None:
        self.cookie_name = cookie_name
        self.max_age = max_age
        self._signer = TimestampSigner(_key_list(secret_keys))

    def decode(self, value: str) -> Session | None:
        try:
            signed = b64decode(value, validate=True)
            text = self._signer.unsign(signed, max_age=self.max_age).decode("utf-8")
        except _DECODE_ERRORS as exc:
            _rejected(self, exc)
            return None
        username, sep, pk = text.rpartition(":")
        if not sep or not (pk.isascii() and pk.isdigit()) or len(pk) > 19 or int(pk) == 0:
            return None
        return {"username": username, "user_id": int(pk)}

    def encode(self, session: Session) -> str:
        username, pk = session.get("username"), session.get("user_id")
        if not isinstance(username, str) or not isinstance(pk, int) or isinstance(pk, bool):
            raise ValueError('a Crax session needs {"username": str, "user_id": int}')
        return b64encode(self._signer.sign(f"{username}:{pk}")).decode("ascii")


SameSite = Literal["lax", "strict", "none"]


class SignedCookie:
    """asgi_groups' own cookie: a signed, timestamped JSON object, for apps without one."""

    def __init__(
        self,
        secret_keys: SecretKeys,
        *,
        cookie_name: str = "asgi_groups_session",
        max_age: int | None = FOURTEEN_DAYS,
    ) -> None:
        self.cookie_name = cookie_name
        self.max_age = max_age
        self._serializer = URLSafeTimedSerializer(
            _key_list(secret_keys), salt="asgi_groups.session"
        )

    def decode(self, value: str) -> Session | None:
        try:
            return _as_session(self._serializer.loads(value, max_age=self.max_age))
        except _DECODE_ERRORS as exc:
            _rejected(self, exc)
            return None

    def encode(self, session: Session) -> str:
        return self._serializer.dumps(session)

    def set_cookie_header(
        self,
        session: Session,
        *,
        secure: bool = True,
        path: str = "/",
        samesite: SameSite = "lax",
    ) -> tuple[bytes, bytes]:
        """A ``set-cookie`` header (HttpOnly) that logs the browser in with ``session``."""
        return self._header(self.encode(session), self.max_age, secure, path, samesite)

    def clear_cookie_header(
        self, *, secure: bool = True, path: str = "/", samesite: SameSite = "lax"
    ) -> tuple[bytes, bytes]:
        """A ``set-cookie`` header that deletes the cookie (log out)."""
        return self._header("", 0, secure, path, samesite)

    def _header(
        self, value: str, max_age: int | None, secure: bool, path: str, samesite: SameSite
    ) -> tuple[bytes, bytes]:
        if samesite not in ("lax", "strict", "none"):
            raise ValueError("samesite must be 'lax', 'strict' or 'none'")
        if samesite == "none" and not secure:
            raise ValueError("browsers reject SameSite=None without Secure")
        if not path.startswith("/") or any(c in path for c in ';,"\\') or not path.isprintable():
            raise ValueError(f"invalid cookie path {path!r}")
        morsel: Morsel[str] = Morsel()
        morsel.set(self.cookie_name, value, value)
        morsel["path"] = path
        morsel["httponly"] = True
        morsel["samesite"] = samesite.capitalize()
        if secure:
            morsel["secure"] = True
        if max_age is not None:
            morsel["max-age"] = str(max_age)
        if max_age == 0:
            morsel["expires"] = "Thu, 01 Jan 1970 00:00:00 GMT"
        return b"set-cookie", morsel.OutputString().encode("latin-1")


def read_cookie(headers: Iterable[tuple[bytes, bytes]], name: str) -> str | None:
    """The value of cookie ``name`` in the request's ``Cookie`` header(s), or ``None``.

    Lenient like browsers and Starlette: pairs split on ``;``, then on the first ``=`` (values
    may contain ``=``), quotes stripped. With duplicates the first one wins (RFC 6265 sends the
    most specific path first).
    """
    for key, raw in headers:
        if key.lower() == b"cookie":
            value = parse_cookies(raw.decode("latin-1")).get(name)
            if value is not None:
                return value
    return None
