"""The routing core: who is connected, who is in which group, and who receives a publish.

Plain synchronous data, no I/O and no event loop (like the protocol layers of h11 and wsproto).
Every change returns the effects the I/O edge must perform: subscribe to a channel when its
first local member arrives, unsubscribe after the last one leaves, and tell the backend that a
user's connection count in a group changed. Every operation is O(1) in the number of members
(and linear in the few groups one connection is in).
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from .channels import BROADCAST, group_channel, user_channel, user_of

__all__ = ["Effect", "Member", "PresenceChanged", "Router", "Subscribe", "Unsubscribe"]


class Member(Protocol, Hashable):
    """Anything hashable with an ``id`` and a ``user_id`` (``None`` for anonymous)."""

    @property
    def id(self) -> str: ...

    @property
    def user_id(self) -> str | None: ...


M = TypeVar("M", bound=Member)


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Start receiving ``channel`` from the backend: its first local member arrived."""

    channel: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Stop receiving ``channel``: its last local member left."""

    channel: str


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    """``user_id`` now has ``count`` local connections in ``group``.

    ``event`` is ``"join"`` when the count went from 0 to 1, ``"leave"`` when it went to 0.
    """

    group: str
    user_id: str
    count: int
    event: Literal["join", "leave"] | None


Effect = Subscribe | Unsubscribe | PresenceChanged

_EMPTY: frozenset[object] = frozenset()


class Router(Generic[M]):
    """Membership, channel naming, presence counting and the recipients of each channel.

    Members are connected before they join groups; empty groups and users disappear. Group
    names are validated by :func:`~asgi_groups.channels.group_channel`.
    """

    __slots__ = ("_by_id", "_counts", "_groups", "_members", "_users")

    def __init__(self) -> None:
        # member -> its groups: one name as it is (an open socket in one group costs no tuple)
        self._members: dict[M, str | tuple[str, ...]] = {}
        self._by_id: dict[str, M] = {}
        self._groups: dict[str, set[M]] = {}  # group channel -> members
        self._users: dict[str, set[M]] = {}  # user channel -> members
        self._counts: dict[str, dict[str, int]] = {}  # group -> {user_id: connections}

    # -- events ------------------------------------------------------------------------------

    def connect(self, member: M) -> list[Effect]:
        """Register ``member``; subscribes its user's channel for the user's first member."""
        if member in self._members:
            return []
        self._members[member] = ()
        self._by_id[member.id] = member
        user_id = member.user_id
        if user_id is None:
            return []
        channel = user_channel(user_id)
        return [Subscribe(channel)] if _add(self._users, channel, member) else []

    def disconnect(self, member: M) -> list[Effect]:
        """Unregister ``member`` and take it out of every group; no effect if unknown."""
        if member not in self._members:
            return []
        groups = _names(self._members.pop(member))
        del self._by_id[member.id]
        effects: list[Effect] = []
        for group in groups:
            self._left(member, group, group_channel(group), effects)
        user_id = member.user_id
        if user_id is not None:
            channel = user_channel(user_id)
            if _discard(self._users, channel, member):
                effects.append(Unsubscribe(channel))
        return effects

    def join(self, member: M, group: str) -> list[Effect]:
        """Put ``member`` in ``group``; ``KeyError`` for a member that is not connected."""
        channel = group_channel(group)
        if member not in self._members:
            raise KeyError(f"{member!r} is not connected")
        mine = _names(self._members[member])
        if group in mine:
            return []
        self._members[member] = (*mine, group) if mine else group
        effects: list[Effect] = []
        if _add(self._groups, channel, member):
            effects.append(Subscribe(channel))
        user_id = member.user_id
        if user_id is not None:
            counts = self._counts.setdefault(group, {})
            count = counts[user_id] = counts.get(user_id, 0) + 1
            effects.append(PresenceChanged(group, user_id, count, "join" if count == 1 else None))
        return effects

    def leave(self, member: M, group: str) -> list[Effect]:
        """Take ``member`` out of ``group``; no effect if it is not there."""
        channel = group_channel(group)
        mine = _names(self._members.get(member, ()))
        if group not in mine:
            return []
        rest = tuple(g for g in mine if g != group)
        self._members[member] = rest[0] if len(rest) == 1 else rest
        effects: list[Effect] = []
        self._left(member, group, channel, effects)
        return effects

    def _left(self, member: M, group: str, channel: str, effects: list[Effect]) -> None:
        if _discard(self._groups, channel, member):
            effects.append(Unsubscribe(channel))
        user_id = member.user_id
        if user_id is None:
            return
        counts = self._counts[group]
        count = counts[user_id] - 1
        if count:
            counts[user_id] = count
        else:
            del counts[user_id]
            if not counts:
                del self._counts[group]
        effects.append(PresenceChanged(group, user_id, count, None if count else "leave"))

    # -- routing -----------------------------------------------------------------------------

    def recipients(self, channel: str, exclude: str | None = None) -> Collection[M]:
        """The local members a publish on ``channel`` reaches, without member ``exclude``.

        Without ``exclude`` this is a live view: do not change membership while iterating it.
        """
        if channel == BROADCAST:
            members: Collection[M] = self._members.keys()
        else:
            members = self._groups.get(channel) or self._users.get(channel) or _EMPTY  # type: ignore[assignment]
        if exclude is None:
            return members
        skip = self._by_id.get(exclude)
        if skip is None or skip not in members:
            return members
        return [member for member in members if member is not skip]

    # -- queries -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member: object) -> bool:
        return member in self._members

    def get(self, member_id: str) -> M | None:
        return self._by_id.get(member_id)

    def members(self) -> Iterable[M]:
        return self._members.keys()

    def group(self, group: str) -> Collection[M]:
        """Members of ``group`` (a live view)."""
        return self._groups.get(group_channel(group)) or _EMPTY  # type: ignore[return-value]

    def user(self, user_id: object) -> Collection[M]:
        """Members of one user (a live view)."""
        return self._users.get(user_channel(user_id)) or _EMPTY  # type: ignore[return-value]

    def user_ids(self) -> list[str]:
        """The ids of the users with at least one member."""
        return [user for channel in self._users if (user := user_of(channel)) is not None]

    def groups_of(self, member: M) -> frozenset[str]:
        return frozenset(_names(self._members.get(member, ())))

    def presence(self, group: str) -> dict[str, int]:
        """``{user_id: connections}`` of the authenticated members of ``group``."""
        return dict(self._counts.get(group, ()))

    def presence_snapshot(self) -> dict[str, dict[str, int]]:
        """``{group: {user_id: connections}}`` for every group with an authenticated member."""
        return {group: dict(counts) for group, counts in self._counts.items()}

    @property
    def counts(self) -> tuple[int, int, int]:
        """``(members, users, groups)``."""
        return len(self._members), len(self._users), len(self._groups)


def _names(groups: str | tuple[str, ...]) -> tuple[str, ...]:
    return (groups,) if type(groups) is str else groups  # type: ignore[return-value]


def _add(index: dict[str, set[M]], key: str, member: M) -> bool:
    """Add ``member`` under ``key``; True when ``key`` was empty before."""
    peers = index.get(key)
    if peers is None:
        index[key] = {member}
        return True
    peers.add(member)
    return False


def _discard(index: dict[str, set[M]], key: str, member: M) -> bool:
    """Remove ``member`` from ``key``; True when that emptied it."""
    peers = index.get(key)
    if peers is None or member not in peers:
        return False
    peers.remove(member)
    if peers:
        return False
    del index[key]
    return True
