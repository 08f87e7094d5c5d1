"""ASGI callable types and the small protocols the core talks to (codecs, users, loaders)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Protocol, runtime_checkable

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Session = dict[str, Any]


@runtime_checkable
class UserLike(Protocol):
    """What the core needs of a user: an identity, a name, a login flag and group names."""

    @property
    def id(self) -> Any: ...

    @property
    def username(self) -> str: ...

    @property
    def is_authenticated(self) -> bool: ...

    @property
    def groups(self) -> Iterable[str]: ...


@runtime_checkable
class SessionCodec(Protocol):
    """Reads (and writes) one signed session cookie format; a bad cookie decodes to ``None``."""

    cookie_name: str

    def decode(self, value: str) -> Session | None: ...

    def encode(self, session: Session) -> str: ...


@runtime_checkable
class UserStore(Protocol):
    """Anything with ``async load(session) -> user | None`` (e.g. ``SqlUserStore``)."""

    async def load(self, session: Session) -> UserLike | None: ...


UserLoader = Callable[[Session], Awaitable[UserLike | None]]
