"""The default backend: one process, nothing to install; history in ring buffers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..frames import Frame
from ..history import Entry, History, HistoryLimits, Position, Recovery
from .base import Backend, HistoryUnavailable

__all__ = ["MemoryBackend"]

#: Seconds between sweeps of expired history (made while publishing).
PRUNE_EVERY = 60.0


class MemoryBackend(Backend):
    """Delivers every publish straight to the local registry.

    History lives in this process (:class:`~asgi_groups.history.History`): its epoch changes
    when the process restarts, so clients of the previous process are told to reload.
    """

    name = "memory"
    _history: History | None = None
    _pruned = 0.0

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        #: Seconds, for history ages (injectable so that expiry can be tested without waiting).
        self.clock = clock

    def keep_history(self, limits: HistoryLimits) -> None:
        self.history_limits = limits
        self._history = History(limits)

    async def publish(
        self, channel: str, frame: Frame, exclude: str | None, history: bool = False
    ) -> Position | None:
        kept = self._history
        position = None
        if history and kept is not None:
            now = self.clock()
            position = kept.append(channel, frame, now)
            if now - self._pruned >= PRUNE_EVERY:  # idle channels go, within a minute of ttl
                self._pruned = now
                kept.prune(now)
        self.sink.deliver(channel, frame, exclude, position)
        return position

    async def recover(self, channel: str, position: Position) -> Recovery:
        return self._kept().since(channel, position, self.clock())

    async def latest(self, channel: str, count: int) -> tuple[Position, list[Entry]]:
        kept = self._kept()
        now = self.clock()
        return kept.top(channel, now), kept.latest(channel, count, now)

    async def subscribe(self, channel: str) -> None:
        return None

    def unsubscribe(self, channel: str) -> None:
        return None

    async def control(self, op: str, args: dict[str, Any]) -> None:
        self.sink.control(op, args)

    async def presence(self, group: str) -> dict[str, int]:
        return self.sink.presence(group)

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        if self._history is not None:
            self._history.prune(self.clock())
            stats["history"] = self._history.stats()
        return stats

    def _kept(self) -> History:
        if self._history is None:
            raise HistoryUnavailable("history is off: Registry(history=HistoryLimits(...))")
        return self._history
