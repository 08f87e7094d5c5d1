"""Users as the core sees them: ``AnonymousUser``, a simple ``User``, and an in-memory loader."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .types import Session, UserLike

__all__ = ["ANONYMOUS", "AnonymousUser", "InMemoryUsers", "SimpleUser"]


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
