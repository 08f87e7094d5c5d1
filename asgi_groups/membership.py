"""Who is in which group, and who is which user: plain synchronous data, no I/O, no event loop.

Every operation is O(1) and reports what changed for the I/O edge (a backend subscribes to a
channel when its first local member arrives and unsubscribes after the last one leaves).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, Protocol, TypeVar

__all__ = ["Member", "Membership", "Removed"]


class Member(Protocol, Hashable):
    """Anything hashable with a ``user_id`` (``None`` for anonymous)."""

    @property
    def user_id(self) -> str | None: ...


M = TypeVar("M", bound=Member)

_EMPTY: frozenset[object] = frozenset()


class Removed:
    """What removing a member emptied: groups with no local member left, and the user if gone."""

    __slots__ = ("groups", "user_gone")

    def __init__(self, groups: list[str], user_gone: bool) -> None:
        self.groups = groups
        self.user_gone = user_gone


class Membership(Generic[M]):
    """Indexes ``group -> members``, ``user -> members`` and ``member -> groups``.

    Empty groups and users disappear. Members must be added before they can join.
    """

    __slots__ = ("_groups", "_members", "_users")

    def __init__(self) -> None:
        self._members: dict[M, set[str] | None] = {}
        self._groups: dict[str, set[M]] = {}
        self._users: dict[str, set[M]] = {}

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member: object) -> bool:
        return member in self._members

    def add(self, member: M) -> bool:
        """Register ``member``; True when it is its user's first local member."""
        if member in self._members:
            return False
        self._members[member] = None
        user_id = member.user_id
        if user_id is None:
            return False
        peers = self._users.get(user_id)
        if peers is None:
            self._users[user_id] = {member}
            return True
        peers.add(member)
        return False

    def remove(self, member: M) -> Removed | None:
        """Unregister ``member`` and take it out of every group; None if it was not registered."""
        if member not in self._members:
            return None
        groups = self._members.pop(member) or ()
        emptied = [group for group in groups if self._discard(self._groups, group, member)]
        user_id = member.user_id
        user_gone = user_id is not None and self._discard(self._users, user_id, member)
        return Removed(emptied, user_gone)

    def join(self, member: M, group: str) -> bool:
        """Put ``member`` in ``group``; True when the group had no local member before."""
        if member not in self._members:
            raise KeyError("member is not registered")
        mine = self._members[member]
        if mine is None:
            mine = self._members[member] = set()
        elif group in mine:
            return False
        mine.add(group)
        peers = self._groups.get(group)
        if peers is None:
            self._groups[group] = {member}
            return True
        peers.add(member)
        return False

    def leave(self, member: M, group: str) -> bool:
        """Take ``member`` out of ``group``; True when that emptied the group locally."""
        mine = self._members.get(member)
        if not mine or group not in mine:
            return False
        mine.discard(group)
        if not mine:
            self._members[member] = None
        return self._discard(self._groups, group, member)

    def group(self, group: str) -> set[M] | frozenset[M]:
        """Members of ``group`` (live view; copy before mutating membership while iterating)."""
        return self._groups.get(group) or _EMPTY  # type: ignore[return-value]

    def user(self, user_id: str) -> set[M] | frozenset[M]:
        return self._users.get(user_id) or _EMPTY  # type: ignore[return-value]

    def members(self) -> Iterable[M]:
        return self._members.keys()

    def groups_of(self, member: M) -> frozenset[str]:
        return frozenset(self._members.get(member) or ())

    def group_names(self) -> Iterable[str]:
        return self._groups.keys()

    def user_ids(self) -> Iterable[str]:
        return self._users.keys()

    def presence(self, group: str) -> dict[str, int]:
        """``{user_id: connections}`` of the authenticated members of ``group``."""
        counts: dict[str, int] = {}
        for member in self._groups.get(group, ()):
            user_id = member.user_id
            if user_id is not None:
                counts[user_id] = counts.get(user_id, 0) + 1
        return counts

    @property
    def counts(self) -> tuple[int, int, int]:
        """``(members, users, groups)``."""
        return len(self._members), len(self._users), len(self._groups)

    @staticmethod
    def _discard(index: dict[str, set[M]], key: str, member: M) -> bool:
        peers = index.get(key)
        if peers is None:
            return False
        peers.discard(member)
        if peers:
            return False
        del index[key]
        return True
