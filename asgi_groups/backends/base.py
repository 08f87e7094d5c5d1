"""How a registry reaches other processes: the interface every backend implements.

Channels are plain strings named by :mod:`asgi_groups.channels` (a group, a user, everyone). A
backend hands what it receives to one :class:`Sink`, the local side of its registry, and never
calls anything else of the registry.

Method colours follow one rule: what waits for the network is ``async`` (``start``, ``close``,
``publish``, ``subscribe``, ``control``, ``presence``, ``flush_presence``); what only records a
change for later I/O is plain and never blocks (``unsubscribe``, ``presence_changed``,
``watch_presence``), so that it can run inside a synchronous membership change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal, Protocol, TypedDict

from ..errors import AsgiGroupsError
from ..frames import Frame
from ..history import Entry, HistoryLimits, Position, Recovery

__all__ = ["BROADCAST", "Backend", "HistoryUnavailable", "PresenceEvent", "Sink"]

BROADCAST = "*"


class PresenceEvent(TypedDict):
    """A user's first connection in a process joined ``group`` ("join") or its last one left."""

    type: Literal["presence"]
    group: str
    user_id: str
    event: Literal["join", "leave"]


class Sink(Protocol):
    """The local side of a registry, as a backend sees it: where received messages go."""

    def deliver(
        self, channel: str, frame: Frame, exclude: str | None, position: Position | None = None
    ) -> int:
        """Queue ``frame`` for the local subscribers of ``channel``; returns how many.

        ``position`` is the message's place in the channel's history, when it keeps one.
        """

    def control(self, op: str, args: dict[str, Any]) -> None:
        """Apply a remote-control operation (e.g. ``disconnect_user``) to local connections."""

    def presence(self, group: str) -> dict[str, int]:
        """``{user_id: connections}`` in ``group``, this process only."""

    def presence_snapshot(self) -> dict[str, dict[str, int]]:
        """``{group: {user_id: connections}}`` for every group with a local user."""

    def presence_event(self, event: PresenceEvent) -> None:
        """A presence event from any process, for the registry's callbacks."""

    def interrupted(self, cause: str) -> None:
        """Receiving stopped (``cause``): what is published from now on may be missed."""

    def resumed(self, cause: str, down_at: float) -> None:
        """Receiving works again after a break that began at ``down_at`` (``time.time()``);
        whatever was published meanwhile may have been missed."""


class HistoryUnavailable(AsgiGroupsError):
    """This backend keeps no history (or history was not configured)."""


class Backend(ABC):
    """Transport between registries. ``bind`` is called once, before ``start``.

    History (positions and recent messages per channel, for recovery) is optional:
    :meth:`keep_history` turns it on; a backend that keeps it assigns a :class:`Position` to
    every publish made with ``history=True`` and answers :meth:`recover` and :meth:`latest`.
    """

    name = "backend"
    _watching_presence = False
    sink: Sink
    #: The bounds of history, once :meth:`keep_history` was called.
    history_limits: HistoryLimits | None = None

    def keep_history(self, limits: HistoryLimits) -> None:
        """Keep history within ``limits`` for the channels published with ``history=True``.

        A backend that keeps history overrides this; the default refuses at once, so that a
        registry configured with history never starts without it.
        """
        raise HistoryUnavailable(f"the {self.name} backend keeps no history")

    def bind(self, sink: Sink) -> None:
        """Attach the registry side that receives this backend's deliveries."""
        self.sink = sink

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect; called by ``Registry.start``."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect and release resources; called by ``Registry.close``."""

    @abstractmethod
    async def publish(
        self, channel: str, frame: Frame, exclude: str | None, history: bool = False
    ) -> Position | None:
        """Deliver ``frame`` to every subscriber of ``channel`` in every process, once each.

        With ``history`` (and history kept), the message is appended to the channel's history
        and delivered with its position, which is returned.
        """

    async def recover(self, channel: str, position: Position) -> Recovery:
        """What ``channel`` published after ``position``, or why that cannot be told."""
        raise HistoryUnavailable(f"the {self.name} backend keeps no history")

    async def latest(self, channel: str, count: int) -> tuple[Position, list[Entry]]:
        """The channel's newest position and up to ``count`` newest kept messages."""
        raise HistoryUnavailable(f"the {self.name} backend keeps no history")

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start receiving ``channel`` (its first local member arrived)."""

    @abstractmethod
    def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel`` (its last local member left); must not block."""

    @abstractmethod
    async def control(self, op: str, args: dict[str, Any]) -> None:
        """Run a remote-control operation in every process (e.g. ``disconnect_user``)."""

    async def revocations(self, user_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The last ``disconnect_user`` of each of ``user_ids`` that is still remembered.

        Asked after a break, for revocations this process may have missed; a backend whose
        control operations cannot be missed returns nothing.
        """
        return {}

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
            self.sink.presence_event(
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
