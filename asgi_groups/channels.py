"""Channel names: where a publish goes. The only place that builds or reads them.

A channel is a plain string a backend carries as it is: ``g:<group>`` for a group,
``u:<user_id>`` for every connection of one user, and ``*`` for everyone.
"""

from __future__ import annotations

__all__ = [
    "BROADCAST",
    "MAX_GROUP_NAME",
    "group_channel",
    "group_of",
    "user_channel",
    "user_key",
    "user_of",
]

BROADCAST = "*"
#: Longest group name, in characters.
MAX_GROUP_NAME = 200

_GROUP = "g:"
_USER = "u:"


def group_channel(group: str) -> str:
    """The channel of ``group``; ``ValueError`` for a name that is empty, too long or not text."""
    if not isinstance(group, str) or not group or len(group) > MAX_GROUP_NAME:
        raise ValueError(f"group names are non-empty strings of at most {MAX_GROUP_NAME} chars")
    return _GROUP + group


def user_key(user_id: object) -> str:
    """User ids are compared as strings: ``7`` and ``"7"`` are the same user."""
    if user_id is None:
        raise ValueError("user_id is required")
    return str(user_id)


def user_channel(user_id: object) -> str:
    """The channel that reaches every connection of one user."""
    return _USER + user_key(user_id)


def group_of(channel: str) -> str | None:
    """The group a channel names, or ``None`` for a user or broadcast channel."""
    return channel[2:] if channel.startswith(_GROUP) else None


def user_of(channel: str) -> str | None:
    """The user id a channel names, or ``None`` for a group or broadcast channel."""
    return channel[2:] if channel.startswith(_USER) else None
