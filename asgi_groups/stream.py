"""One recoverable connection's stream: positions seen, messages held during a resume, frames.

Plain synchronous code (no loop, no I/O), used by the registry on every delivery to a
recoverable connection and by :class:`~asgi_groups.recoverable.RecoverableView` on resume:

* while the connection resumes, live messages are **held**; the replay of what it missed is
  queued first, then the held messages, each channel de-duplicated by offset — so the seam
  between history and live traffic has no gap and no duplicate;
* afterwards a message is passed on unless its offset is not past the last one passed on for
  its channel and epoch (a duplicate).

It also builds the protocol's frames (see docs/PROTOCOL.md).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from typing import Any

from .frames import Frame
from .history import Entry, Position

__all__ = [
    "MESSAGE",
    "Stream",
    "error_frame",
    "history_frame",
    "message_frame",
    "parse_positions",
    "protocol_frame",
    "request_id_of",
]

#: ``type`` of the protocol's frames (docs/PROTOCOL.md); the prefix is reserved.
PREFIX = "ag."
HELLO = "ag.hello"
WELCOME = "ag.welcome"
MESSAGE = "ag.message"
HISTORY = "ag.history"
ERROR = "ag.error"
REFRESH = "ag.refresh"
REFRESHED = "ag.refreshed"

#: Longest string ``id`` of a request echoed in its answer.
MAX_REQUEST_ID = 64
#: Longest epoch accepted from a client (ours are 16 hex digits, a colon and a counter).
MAX_EPOCH = 64
#: Most channel positions one hello may carry.
MAX_POSITIONS = 1000


class Stream:
    """Positions and the hold of one recoverable connection.

    ``max_held``: live messages that may wait during a resume; one more and :attr:`overflowed`
    turns true (the connection is then closed with 1013, as a slow reader would be).
    """

    __slots__ = ("_held", "max_held", "overflowed", "positions")

    def __init__(self, max_held: int) -> None:
        #: The last position passed on, per channel (channels with history only).
        self.positions: dict[str, Position] = {}
        self.max_held = max_held
        self.overflowed = False
        self._held: list[tuple[str, Position | None, Frame]] | None = []

    @property
    def holding(self) -> bool:
        """True until :meth:`release`: live messages wait for the resume to finish."""
        return self._held is not None

    def offer(self, channel: str, position: Position | None, frame: Frame) -> Frame | None:
        """The frame to send now, or None (held for later, or a duplicate)."""
        held = self._held
        if held is not None:
            if len(held) >= self.max_held:
                self.overflowed = True
            else:
                held.append((channel, position, frame))
            return None
        return frame if self._advance(channel, position) else None

    def hold(self) -> None:
        """Hold live messages again (a recovery in place, after a break in the backend)."""
        if self._held is None:
            self._held = []
            self.overflowed = False

    def subscribed_at(self, channel: str, top: Position) -> Position:
        """Where a channel not recovered goes on from: just before its first held message
        (what was published since this connection subscribed), else ``top``."""
        for held_channel, position, _ in self._held or ():
            if held_channel == channel and position is not None:
                if position.epoch == top.epoch and position.offset <= top.offset:
                    return Position(top.epoch, position.offset - 1)
                break
        return top

    def start(self, channel: str, position: Position | None) -> None:
        """Continue ``channel`` after ``position`` (what the welcome tells the client)."""
        if position is None:
            self.positions.pop(channel, None)
        else:
            self.positions[channel] = position

    def replay(self, channel: str, epoch: str, entries: Iterable[Entry]) -> list[Frame]:
        """The frames of ``entries`` (missed messages of ``channel``) that move it forward."""
        frames = []
        for entry in entries:
            position = Position(epoch, entry.offset)
            if self._advance(channel, position):
                frames.append(message_frame(channel, position, entry.frame))
        return frames

    def release(self) -> list[Frame]:
        """Stop holding: the held frames that are not duplicates, in arrival order."""
        held, self._held = self._held, None
        if not held:
            return []
        return [frame for channel, position, frame in held if self._advance(channel, position)]

    def _advance(self, channel: str, position: Position | None) -> bool:
        """Record ``position`` as passed on; False when it is not past the last one."""
        if position is None:
            return True
        last = self.positions.get(channel)
        if last is not None and last.epoch == position.epoch and position.offset <= last.offset:
            return False
        self.positions[channel] = position
        return True


# -- frames ------------------------------------------------------------------------------------


def _data(frame: Frame) -> str:
    """The ``"data"`` member of an envelope: the JSON value, a JSON string, or base64."""
    text: str | None = frame.event.get("text")
    if text is None:
        encoded = base64.b64encode(frame.event["bytes"]).decode("ascii")
        return f'"{encoded}","encoding":"base64"'
    return text if frame.json else json.dumps(text, ensure_ascii=False)


def message_frame(channel: str, position: Position | None, frame: Frame) -> Frame:
    """An ``ag.message`` envelope around ``frame`` (built once per publish, shared)."""
    head = f'{{"type":"ag.message","channel":{json.dumps(channel, ensure_ascii=False)}'
    if position is not None:
        head += f',"epoch":{json.dumps(position.epoch)},"offset":{position.offset}'
    return Frame.text(f'{head},"data":{_data(frame)}}}')


def protocol_frame(body: Mapping[str, Any]) -> Frame:
    """Any other protocol frame, from a JSON-able mapping."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return Frame({"type": "websocket.send", "text": text}, len(text.encode()), True)


def history_frame(
    request_id: object, channel: str, top: Position, entries: Iterable[Entry]
) -> Frame:
    """The answer to an ``ag.history`` request: newest position and messages, oldest first."""
    messages = ",".join(f'{{"offset":{e.offset},"data":{_data(e.frame)}}}' for e in entries)
    head = json.dumps(
        {
            "type": HISTORY,
            "id": request_id,
            "channel": channel,
            "epoch": top.epoch,
            "offset": top.offset,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return Frame.text(f'{head[:-1]},"messages":[{messages}]}}')


def request_id_of(body: Mapping[str, Any]) -> int | str | None:
    """A request's ``id`` to echo in the answer: an integer or a short string, else None."""
    value = body.get("id")
    if (type(value) is int and abs(value) < 2**53) or (
        isinstance(value, str) and len(value) <= MAX_REQUEST_ID
    ):
        return value
    return None


def error_frame(error: str, detail: str, request_id: object = None) -> Frame:
    body: dict[str, Any] = {"type": ERROR, "error": error, "detail": detail}
    if request_id is not None:
        body["id"] = request_id
    return protocol_frame(body)


def parse_positions(value: object) -> dict[str, Position]:
    """The ``positions`` of a hello, validated; ``ValueError`` says what is wrong."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("positions must be an object")
    if len(value) > MAX_POSITIONS:
        raise ValueError(f"at most {MAX_POSITIONS} positions")
    positions = {}
    for channel, item in value.items():
        if not isinstance(item, dict):
            raise ValueError(f"position of {channel!r} must be an object")
        epoch, offset = item.get("epoch"), item.get("offset")
        if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH:
            raise ValueError(f"epoch of {channel!r} must be a short string")
        if type(offset) is not int or not 0 <= offset < 2**63:
            raise ValueError(f"offset of {channel!r} must be a non-negative integer")
        positions[channel] = Position(epoch, offset)
    return positions
