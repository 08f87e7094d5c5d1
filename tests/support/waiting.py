"""Waiting for a condition another process or task brings about, with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll ``predicate`` each 10 ms until true; fail after ``timeout`` seconds.

    For state with no event to await (another process's registry, a server's counters).
    """
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - no event exists for foreign state
            await asyncio.sleep(0.01)
