"""Send one message through Redis from a process that has no sockets (scripts, the CLI, cron)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .backends.redis import DEFAULT_PREFIX
from .limits import DEFAULT_MAX_MESSAGE_SIZE
from .registry import Registry

__all__ = ["publish_once"]

_REDIS_SCHEMES = {"redis", "rediss", "unix", "redis+sentinel"}


async def publish_once(
    url: str,
    message: Any,
    *,
    group: str | None = None,
    user: object | None = None,
    broadcast: bool = False,
    prefix: str = DEFAULT_PREFIX,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    **backend_options: Any,
) -> None:
    """Publish ``message`` once to a group, a user or everyone, then disconnect.

    Name exactly one target. Uses a publish-only backend (no subscriptions, no presence), so
    it costs one connection and one PUBLISH. ``BackendUnavailable`` if Redis is unreachable.
    """
    if urlsplit(url).scheme not in _REDIS_SCHEMES:
        raise ValueError(f"publish_once needs a Redis URL (redis://, rediss://, unix://): {url!r}")
    if (group is not None) + (user is not None) + bool(broadcast) != 1:
        raise ValueError("name exactly one target: group=..., user=... or broadcast=True")
    registry = Registry(
        url, prefix=prefix, listen=False, max_message_size=max_message_size, **backend_options
    )
    async with registry:
        if group is not None:
            await registry.send_group(group, message)
        elif user is not None:
            await registry.send_user(user, message)
        else:
            await registry.broadcast(message)
