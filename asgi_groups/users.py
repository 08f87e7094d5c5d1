"""Users as the core sees them: ``AnonymousUser``, a simple ``User``, and an in-memory loader."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import AsgiGroupsError
from .types import Session, UserLike

__all__ = [
    "ANONYMOUS",
    "AnonymousUser",
    "InMemoryUsers",
    "ShapedUser",
    "SimpleUser",
    "UserShapeError",
    "as_user",
    "group_name",
]


class UserShapeError(AsgiGroupsError, TypeError):
    """A user object lacks what the core needs (an ``id``, or a ``username`` to stand for it)."""


class AnonymousUser:
    """No session, or a session that names no valid user."""

    __slots__ = ()
    id: Any = None
    username = ""
    is_authenticated = False
    groups: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return "AnonymousUser()"

    def __bool__(self) -> bool:
        return False


ANONYMOUS = AnonymousUser()


@dataclass(frozen=True, slots=True)
class SimpleUser:
    """A plain authenticated user (tests, apps with their own user model)."""

    id: Any
    username: str
    groups: frozenset[str] = field(default_factory=frozenset)
    is_authenticated: bool = True


class InMemoryUsers:
    """A user loader over a dict: ``session[session_key]`` → user. For tests and small apps."""

    def __init__(self, users: Iterable[UserLike] = (), *, session_key: str = "user_id") -> None:
        self.session_key = session_key
        self._users: dict[str, UserLike] = {str(u.id): u for u in users}

    def add(self, user: UserLike) -> None:
        self._users[str(user.id)] = user

    def remove(self, user_id: object) -> None:
        self._users.pop(str(user_id), None)

    async def load(self, session: Session | Mapping[str, Any]) -> UserLike | None:
        user_id = session.get(self.session_key)
        if user_id is None or isinstance(user_id, bool | dict | list):
            return None
        return self._users.get(str(user_id))


class ShapedUser:
    """Another library's user object (fastapi-users' ``User``, Starlette's ``SimpleUser``, ...)
    seen with the members the core needs; every other attribute reads through to it."""

    __slots__ = ("groups", "id", "is_authenticated", "original", "username")

    def __init__(
        self, original: Any, id: Any, username: str, groups: frozenset[str], authenticated: bool
    ) -> None:
        self.original = original
        self.id = id
        self.username = username
        self.groups = groups
        self.is_authenticated = authenticated

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)

    def __repr__(self) -> str:
        return f"ShapedUser({self.original!r})"


_MEMBERS = ("id", "username", "is_authenticated", "groups")


def as_user(user: Any) -> UserLike:
    """``user`` as the core sees users, accepted by shape.

    An object with ``id``, ``username``, ``groups`` and ``is_authenticated`` is used as it is.
    Otherwise: ``id`` (else ``username``) is the identity; ``username`` falls back to ``email``
    then the id; ``groups`` to none (a group object is named by its ``name``);
    ``is_authenticated`` to ``is_active``, else True (a loader returned it). An object with no
    identity that says it is not authenticated is anonymous; any other with no identity at all
    raises ``UserShapeError`` naming what is missing.
    """
    if all(hasattr(user, name) for name in _MEMBERS):
        return user  # type: ignore[no-any-return]
    ident = getattr(user, "id", None)
    name = getattr(user, "username", None)
    if ident is None:
        ident = name
    authenticated = getattr(user, "is_authenticated", None)
    if ident is None and authenticated is not None and not authenticated:
        return ANONYMOUS  # e.g. Starlette's UnauthenticatedUser: nobody, not a broken user
    if ident is None:
        missing = [m for m in _MEMBERS if not hasattr(user, m)]
        raise UserShapeError(
            f"the user object {type(user).__qualname__} has no 'id' (nor 'username'); "
            f"missing: {', '.join(missing)}. Give it an 'id', or return a SimpleUser(id, "
            "username, groups) from the user loader"
        )
    if name is None:
        name = getattr(user, "email", None) or ident
    groups = getattr(user, "groups", None) or ()
    if isinstance(groups, str | bytes):
        groups = (groups,)
    if authenticated is None:
        authenticated = getattr(user, "is_active", True)
    return ShapedUser(
        user, ident, str(name), frozenset(map(group_name, groups)), bool(authenticated)
    )


def group_name(group: Any) -> str:
    """A group as the core names it: a string as it is; an object (an ORM row of the app's
    groups table, Django's ``Group``) by its ``name`` attribute, else its ``str``."""
    if isinstance(group, str):
        return group
    name = getattr(group, "name", None)
    return str(name) if name is not None else str(group)
