"""``Request``: a read-only view of a WebSocket scope (headers, cookies, query, session, user)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl

from .types import Scope, Session, UserLike
from .users import ANONYMOUS

__all__ = ["Headers", "QueryParams", "Request", "parse_cookies", "scope_user"]


class Headers(Mapping[str, str]):
    """Case-insensitive, multi-value safe headers; ``h["x"]`` is the first value."""

    __slots__ = ("_items",)

    def __init__(self, raw: Any = ()) -> None:
        self._items: list[tuple[str, str]] = [
            (bytes(k).decode("latin-1").lower(), bytes(v).decode("latin-1")) for k, v in raw
        ]

    def __getitem__(self, key: str) -> str:
        key = key.lower()
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def getlist(self, key: str) -> list[str]:
        key = key.lower()
        return [v for k, v in self._items if k == key]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k for k, _ in self._items))

    def __len__(self) -> int:
        return len(dict.fromkeys(k for k, _ in self._items))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and any(k == key.lower() for k, _ in self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class QueryParams(Mapping[str, str]):
    """Query string parameters; ``q["x"]`` is the last value, ``getlist`` gives all."""

    __slots__ = ("_items",)

    def __init__(self, query_string: bytes | str = b"") -> None:
        if isinstance(query_string, bytes):
            query_string = query_string.decode("latin-1")
        self._items = parse_qsl(query_string, keep_blank_values=True)

    def __getitem__(self, key: str) -> str:
        for k, v in reversed(self._items):
            if k == key:
                return v
        raise KeyError(key)

    def getlist(self, key: str) -> list[str]:
        return [v for k, v in self._items if k == key]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k for k, _ in self._items))

    def __len__(self) -> int:
        return len(dict.fromkeys(k for k, _ in self._items))


def parse_cookies(header: str) -> dict[str, str]:
    """Lenient ``Cookie`` header parsing: pairs split on ``;``, then on the FIRST ``=``.

    Values may contain ``=`` (base64 padding); surrounding quotes are stripped; a malformed
    pair is skipped rather than failing the whole header (unlike ``http.cookies``).
    """
    cookies: dict[str, str] = {}
    for chunk in header.split(";"):
        name, sep, value = chunk.partition("=")
        name = name.strip()
        if not sep or not name:
            continue
        cookies.setdefault(name, _unquote(value.strip()))
    return cookies


_UNQUOTE = re.compile(r"\\(?:([0-3][0-7][0-7])|(.))")


def _unquote(value: str) -> str:
    """Strip the double quotes (and backslash escapes) of a quoted cookie value, as Python does."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    return _UNQUOTE.sub(lambda m: chr(int(m[1], 8)) if m[1] else m[2], value[1:-1])


#: User classes that define every member the core needs (checked once: a protocol check is
#: slow, and a reconnect storm makes thousands).
_USER_CLASSES: set[type] = set()
_USER_MEMBERS = ("id", "username", "is_authenticated", "groups")


def scope_user(scope: Scope) -> UserLike:
    """The scope's user; anonymous when none, or when it lacks what the core needs
    (``id``, ``username``, ``is_authenticated``, ``groups``): refused rather than crashed."""
    user = scope.get("user")
    if user is None:
        return ANONYMOUS
    kind = type(user)
    if kind in _USER_CLASSES:
        return user  # type: ignore[no-any-return]
    if not isinstance(user, UserLike):
        return ANONYMOUS
    if all(hasattr(kind, name) for name in _USER_MEMBERS):
        _USER_CLASSES.add(kind)
    return user


class Request:
    """What a view knows about the socket's opening handshake.

    Small while a socket is idle: only the scope is kept; headers, cookies and the query are
    parsed on first use and cached.
    """

    __slots__ = ("_cookies", "_headers", "_query", "scope")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self._headers: Headers | None = None
        self._cookies: dict[str, str] | None = None
        self._query: QueryParams | None = None

    @property
    def path(self) -> str:
        return str(self.scope.get("path", "/"))

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = Headers(self.scope.get("headers", ()))
        return self._headers

    @property
    def cookies(self) -> dict[str, str]:
        if self._cookies is None:
            cookies: dict[str, str] = {}
            for header in self.headers.getlist("cookie"):
                for name, value in parse_cookies(header).items():
                    cookies.setdefault(name, value)
            self._cookies = cookies
        return self._cookies

    @property
    def query(self) -> QueryParams:
        if self._query is None:
            self._query = QueryParams(self.scope.get("query_string", b""))
        return self._query

    @property
    def client(self) -> tuple[str, int] | None:
        client = self.scope.get("client")
        return (str(client[0]), int(client[1])) if client else None

    @property
    def session(self) -> Session:
        session = self.scope.get("session")
        return session if isinstance(session, dict) else {}

    @property
    def user(self) -> UserLike:
        """The scope's user (see :func:`scope_user`)."""
        return scope_user(self.scope)

    @property
    def subprotocols(self) -> list[str]:
        return list(self.scope.get("subprotocols", ()))

    def __repr__(self) -> str:
        return f"<Request {self.path} user={self.user.username!r}>"
