"""Stream positions and bounded history per channel, and the recovery decision.

Every message published on a channel gets a :class:`Position`: ``offset`` counts the
channel's messages one by one, ``epoch`` names one continuous history and changes whenever
history may have been lost: a new :class:`History` (a process start) or a channel forgotten
after ``meta_ttl`` without messages. A client that comes back with the last position
it saw gets the missed messages in order, or is told why it cannot (:class:`Recovery`), so
that it reloads its state instead of living with a gap.

Plain synchronous data: the clock is passed in (``now``, seconds), nothing waits, nothing
does I/O. A backend that keeps history elsewhere (Redis Streams) must give the same answers.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .frames import Frame

__all__ = [
    "EPOCH_CHANGED",
    "EXPIRED",
    "FROM_THE_FUTURE",
    "GAP_TOO_LARGE",
    "REPLAY_CAP",
    "Entry",
    "History",
    "HistoryLimits",
    "Position",
    "Recovery",
    "decide",
]

Reason = Literal[
    "epoch changed",
    "gap larger than history",
    "history expired",
    "replay cap exceeded",
    "offset from the future",
]
#: Why a recovery failed (``Recovery.reason``): the history was restarted elsewhere (another
#: process, a restart), the client is further behind than ``size``, the messages it missed
#: aged out (``ttl``), it is further behind than ``max_replay``, or its position is invalid.
EPOCH_CHANGED: Reason = "epoch changed"
GAP_TOO_LARGE: Reason = "gap larger than history"
EXPIRED: Reason = "history expired"
REPLAY_CAP: Reason = "replay cap exceeded"
FROM_THE_FUTURE: Reason = "offset from the future"


@dataclass(frozen=True, slots=True)
class Position:
    """Where a message stands in its channel: ``offset`` within ``epoch``."""

    epoch: str
    offset: int


@dataclass(frozen=True, slots=True)
class HistoryLimits:
    """Bounds of history, per channel.

    ``size``: messages kept (the oldest go first). ``ttl``: seconds a message is kept.
    ``meta_ttl``: seconds a channel without messages keeps its position (epoch and offset), so
    that a client idle for a while is still told "nothing missed"; after it, the channel is
    forgotten and starts a new epoch. ``max_replay``: the most messages one recovery replays; a
    client further behind is told ``recovered: false`` and reloads.
    """

    size: int = 100
    ttl: float = 300.0
    meta_ttl: float = 3600.0
    max_replay: int = 300

    def __post_init__(self) -> None:
        if self.size < 1 or self.max_replay < 1:
            raise ValueError("size and max_replay must be at least 1")
        if self.ttl <= 0 or self.meta_ttl < self.ttl:
            raise ValueError("ttl must be positive and meta_ttl at least ttl")


@dataclass(frozen=True, slots=True)
class Entry:
    """One kept message: its offset, its frame (encoded once), and when it was published."""

    offset: int
    frame: Frame
    at: float


@dataclass(frozen=True, slots=True)
class Recovery:
    """The answer to "what did I miss since ``position``?".

    ``recovered``: every missed message is in ``entries``, in order, none twice. Otherwise
    ``reason`` says why not and ``entries`` is empty. ``position`` is the channel's current top,
    from which the client goes on either way.
    """

    recovered: bool
    position: Position
    entries: list[Entry] = field(default_factory=list)
    reason: Reason | None = None


class _Channel:
    __slots__ = ("entries", "epoch", "offset", "touched")

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.entries: deque[Entry] = deque()
        self.offset = 0  # the offset of the newest message; 0: none yet
        self.touched = 0.0


def decide(
    top: Position, position: Position, after: list[Entry], kept: int, limits: HistoryLimits
) -> Recovery:
    """The recovery answer from what a history holds, wherever it is kept.

    ``top``: the channel's newest position. ``after``: the kept messages after
    ``position.offset``, oldest first (the first may be later than the one that follows
    ``position`` when older ones are gone). ``kept``: how many messages the channel keeps now.
    """
    if position.epoch != top.epoch:
        return Recovery(False, top, reason=EPOCH_CHANGED)
    if not 0 <= position.offset <= top.offset:
        return Recovery(False, top, reason=FROM_THE_FUTURE)
    missed = top.offset - position.offset
    if missed == 0:
        return Recovery(True, top)
    if missed > limits.max_replay:
        return Recovery(False, top, reason=REPLAY_CAP)
    if not after or after[0].offset != position.offset + 1 or len(after) != missed:
        aged = missed <= limits.size and kept < limits.size
        return Recovery(False, top, reason=EXPIRED if aged else GAP_TOO_LARGE)
    return Recovery(True, top, after)


def new_epoch() -> str:
    """A fresh epoch name: 64 random bits, so that two histories never share one."""
    return secrets.token_hex(8)


class History:
    """Positions and bounded history of every channel, in this process's memory.

    Memory is bounded by ``limits.size`` messages per channel; a channel idle for longer than
    ``limits.meta_ttl`` is forgotten entirely (:meth:`prune` sweeps them).
    """

    __slots__ = ("_channels", "_generation", "_kept_bytes", "epoch", "limits")

    def __init__(
        self, limits: HistoryLimits | None = None, *, epoch: Callable[[], str] = new_epoch
    ) -> None:
        self.limits = limits or HistoryLimits()
        #: This history's name; a channel's epoch is ``"<epoch>:<n>"``, n counting the channel
        #: histories started here (so a lapsed one is told apart from another process's).
        self.epoch = epoch()
        self._generation = 0
        self._channels: dict[str, _Channel] = {}
        self._kept_bytes = 0

    def append(self, channel: str, frame: Frame, now: float) -> Position:
        """Keep ``frame`` as the next message of ``channel``; returns its position."""
        state = self._state(channel, now)
        state.offset += 1
        state.touched = now
        entries = state.entries
        entries.append(Entry(state.offset, frame, now))
        self._kept_bytes += frame.size
        if len(entries) > self.limits.size:
            self._kept_bytes -= entries.popleft().frame.size
        return self._position(state)

    def top(self, channel: str, now: float) -> Position:
        """The position of the newest message of ``channel`` (offset 0: none yet).

        A channel without history gets one here, with a fresh epoch: a client that saw no
        message still holds a position that no other history can be mistaken for.
        """
        return self._position(self._state(channel, now))

    def since(self, channel: str, position: Position, now: float) -> Recovery:
        """The messages of ``channel`` after ``position``, or why they cannot be given.

        Ask only about channels the client may receive (the server decides which).
        """
        state = self._state(channel, now)
        top = self._position(state)
        if position.epoch != state.epoch and position.epoch.startswith(self.epoch + ":"):
            return Recovery(False, top, reason=EXPIRED)  # this history forgot the channel
        entries = state.entries
        start = position.offset + 1
        first = start - entries[0].offset if entries else 0
        missed = [entries[i] for i in range(max(first, 0), len(entries))] if entries else []
        return decide(top, position, missed, len(entries), self.limits)

    def latest(self, channel: str, count: int, now: float) -> list[Entry]:
        """Up to ``count`` newest kept messages of ``channel``, oldest first."""
        state = self._live(channel, now)
        if state is None or count <= 0:
            return []
        entries = state.entries
        return [entries[i] for i in range(max(0, len(entries) - count), len(entries))]

    def prune(self, now: float) -> int:
        """Drop expired messages, and channels idle past ``ttl``; returns channels dropped."""
        gone = [name for name, state in self._channels.items() if self._expire(state, now)]
        for name in gone:
            del self._channels[name]
        return len(gone)

    def stats(self) -> dict[str, int]:
        """Channels with a position, messages and bytes kept."""
        messages = sum(len(state.entries) for state in self._channels.values())
        return {"channels": len(self._channels), "messages": messages, "bytes": self._kept_bytes}

    # -- internals ---------------------------------------------------------------------------

    def _live(self, channel: str, now: float) -> _Channel | None:
        state = self._channels.get(channel)
        if state is not None and self._expire(state, now):
            del self._channels[channel]
            return None
        return state

    def _expire(self, state: _Channel, now: float) -> bool:
        """Drop ``state``'s messages older than ``ttl``; True when the whole channel lapsed."""
        horizon = now - self.limits.ttl
        entries = state.entries
        while entries and entries[0].at <= horizon:
            self._kept_bytes -= entries.popleft().frame.size
        return state.touched <= now - self.limits.meta_ttl

    def _state(self, channel: str, now: float) -> _Channel:
        state = self._live(channel, now)
        if state is None:
            self._generation += 1
            state = _Channel(f"{self.epoch}:{self._generation}")
            state.touched = now
            self._channels[channel] = state
        return state

    @staticmethod
    def _position(state: _Channel) -> Position:
        return Position(state.epoch, state.offset)
