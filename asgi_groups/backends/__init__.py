"""Backends: ``memory://`` (default, one process) and ``redis://`` (many processes)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .base import BROADCAST, Backend
from .memory import MemoryBackend

__all__ = ["BROADCAST", "Backend", "MemoryBackend", "backend_from_url"]

_REDIS_SCHEMES = {"redis", "rediss", "unix", "redis+sentinel"}
PORTABLE_OPTIONS = frozenset({"prefix", "on_backend_down", "on_backend_up"})
"""Options every backend takes, so one ``Registry(url, ...)`` call serves memory:// and redis://.
The memory backend ignores them: it has one process and is never down."""


def backend_from_url(url: str | None, **options: Any) -> Backend:
    """Pick a backend by URL scheme: ``memory://`` or ``redis://`` / ``rediss://`` / ``unix://``."""
    scheme = urlsplit(url).scheme if url else "memory"
    if scheme == "memory":
        unknown = sorted(set(options) - PORTABLE_OPTIONS)
        if unknown:
            raise TypeError(f"the memory backend takes no {', '.join(unknown)} (Redis options)")
        return MemoryBackend()
    if scheme in _REDIS_SCHEMES:
        try:
            from .redis import RedisBackend
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "the Redis backend needs redis-py: pip install 'asgi-groups[redis]'"
            ) from exc
        return RedisBackend(url or "", **options)
    raise ValueError(f"unknown backend URL scheme {scheme!r}: use memory:// or redis://")
