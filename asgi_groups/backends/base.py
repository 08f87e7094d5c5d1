"""How a registry reaches other processes: the interface every backend implements.

Channels are plain strings: ``g:<group>``, ``u:<user_id>`` and ``*`` (everyone). A backend
delivers what it receives to the local registry through the ``deliver`` callback it is bound
to, and applies remote-control operations through ``control``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Literal, TypedDict

from ..frames import Frame

__all__ = [
    "BROADCAST",
    "Backend",
    "ControlFn",
    "DeliverFn",
    "LocalPresenceFn",
    "PresenceEvent",
    "PresenceEventFn",
]

BROADCAST = "*"


class PresenceEvent(TypedDict):
    """A user's first connection in a process joined ``group`` ("join") or its last one left."""

    type: Literal["presence"]
    group: str
    user_id: str
    event: Literal["join", "leave"]


#: ``deliver(channel, frame, exclude_id) -> local deliveries``
DeliverFn = Callable[[str, Frame, "str | None"], int]
#: ``control(op, args)`` applies a remote-control operation to local connections.
ControlFn = Callable[[str, dict[str, Any]], None]
#: ``local_presence(group) -> {user_id: connections}`` in this process.
LocalPresenceFn = Callable[[str], dict[str, int]]
#: ``presence_event(event)`` hands a presence event (from any process) to the local registry.
PresenceEventFn = Callable[[PresenceEvent], None]


def _ignore_event(event: PresenceEvent) -> None:
    return None


class Backend(ABC):
    """Transport between registries. ``bind`` is called once, before ``start``."""

    name = "backend"
    _watching_presence = False

    def bind(
        self,
        deliver: DeliverFn,
        control: ControlFn,
        presence: LocalPresenceFn,
        presence_event: PresenceEventFn | None = None,
    ) -> None:
        self._deliver = deliver
        self._control = control
        self._local_presence = presence
        self._presence_event = presence_event or _ignore_event

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect; called by ``Registry.start``."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect and release resources; called by ``Registry.close``."""

    @abstractmethod
    async def publish(self, channel: str, frame: Frame, exclude: str | None) -> None:
        """Deliver ``frame`` to every subscriber of ``channel`` in every process, once each."""

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start receiving ``channel`` (its first local member arrived)."""

    @abstractmethod
    def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel`` (its last local member left); must not block."""

    @abstractmethod
    async def control(self, op: str, args: dict[str, Any]) -> None:
        """Run a remote-control operation in every process (e.g. ``disconnect_user``)."""

    @abstractmethod
    async def presence(self, group: str) -> dict[str, int]:
        """``{user_id: connections}`` in ``group`` summed over every live process."""

    def presence_changed(
        self, group: str, user_id: str, count: int, event: Literal["join", "leave"] | None
    ) -> None:
        """``user_id`` now has ``count`` local connections in ``group``; must not block.

        ``event`` is set when that count went from 0 to 1 ("join") or from 1 to 0 ("leave").
        This default hands events straight to the local registry (one process, nothing stored).
        """
        if event is not None and self._watching_presence:
            self._presence_event(
                {"type": "presence", "group": group, "user_id": user_id, "event": event}
            )

    async def flush_presence(self) -> None:  # noqa: B027 - optional hook
        """Wait until presence changes reported so far are visible to every process."""

    def watch_presence(self) -> None:
        """Deliver presence events to this process from now on (someone registered a callback)."""
        self._watching_presence = True

    def stats(self) -> dict[str, Any]:
        """Backend counters for ``Registry.stats()``."""
        return {"name": self.name}
