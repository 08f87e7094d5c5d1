"""Fixtures shared by the whole suite. Helpers without a fixture live in ``tests/support/``."""

from __future__ import annotations

from tests.support.redis import make, prefix, redis_server, redis_url

__all__ = ["make", "prefix", "redis_server", "redis_url"]
