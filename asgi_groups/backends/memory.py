"""The default backend: one process, nothing to install."""

from __future__ import annotations

from typing import Any

from ..frames import Frame
from .base import Backend

__all__ = ["MemoryBackend"]


class MemoryBackend(Backend):
    """Delivers every publish straight to the local registry."""

    name = "memory"

    async def publish(self, channel: str, frame: Frame, exclude: str | None) -> None:
        self.sink.deliver(channel, frame, exclude)

    async def subscribe(self, channel: str) -> None:
        return None

    def unsubscribe(self, channel: str) -> None:
        return None

    async def control(self, op: str, args: dict[str, Any]) -> None:
        self.sink.control(op, args)

    async def presence(self, group: str) -> dict[str, int]:
        return self.sink.presence(group)
