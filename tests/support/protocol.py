"""A raw client of the recoverable protocol (docs/PROTOCOL.md), for tests that read every frame."""

from __future__ import annotations

import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedOK

__all__ = ["Documents", "Tally", "hello", "open_raw"]


class Documents:
    """A websockets connection whose ``recv()`` gives one document at a time: the server may
    join several JSON documents in one text frame with ``"\\n"`` (docs/PROTOCOL.md); a frame
    whose lines are not all JSON is one document, as sent. Everything else is the connection's."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self._pending: deque[str | bytes] = deque()

    async def recv(self) -> str | bytes:
        if not self._pending:
            frame = await self.conn.recv()
            self._pending.extend(_documents(frame))
        return self._pending.popleft()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def __aiter__(self) -> Documents:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.recv()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None


def _documents(frame: str | bytes) -> list[str | bytes]:
    if isinstance(frame, bytes) or "\n" not in frame:
        return [frame]
    lines = frame.split("\n")
    try:
        for line in lines:
            json.loads(line)
    except ValueError:
        return [frame]
    return list(lines)


@contextlib.asynccontextmanager
async def open_raw(
    address: str, user: int | None, path: str = "/ws", **kw: Any
) -> AsyncIterator[Any]:
    """A websockets connection with the test cookie (user id) and a same-site Origin, read one
    document at a time (``Documents``).

    ``max_queue=None`` by default: a client that closes with unread frames still sees the
    server's close frame at once (websockets stops reading when its queue is full).
    """
    kw.setdefault("max_queue", None)
    headers = {"Cookie": f"session={user}"} if user is not None else {}
    async with connect(
        f"ws://{address}{path}",
        origin=f"http://{address}",  # type: ignore[arg-type]
        additional_headers=headers,
        **kw,
    ) as conn:
        yield Documents(conn)


async def hello(ws: ClientConnection, positions: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send ``ag.hello`` and return the welcome (frames before it must be app frames)."""
    body: dict[str, Any] = {"type": "ag.hello"}
    if positions is not None:
        body["positions"] = positions
    await ws.send(json.dumps(body))
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("type") == "ag.welcome":
            return dict(frame)
        assert not str(frame.get("type", "")).startswith("ag."), frame


@dataclass
class Tally:
    """What one client received: every ``ag.message`` per channel, and its last positions."""

    messages: dict[str, list[Any]] = field(default_factory=dict)
    positions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def take_welcome(self, welcome: dict[str, Any]) -> None:
        for channel, status in welcome["channels"].items():
            if "epoch" in status:
                self.positions[channel] = {"epoch": status["epoch"], "offset": status["offset"]}

    def take(self, frame: dict[str, Any]) -> None:
        assert frame["type"] == "ag.message", frame
        channel = frame["channel"]
        self.messages.setdefault(channel, []).append(frame["data"])
        if "offset" in frame:
            held = self.positions.get(channel)
            if held is not None and held["epoch"] == frame["epoch"]:
                assert frame["offset"] == held["offset"] + 1, (held, frame)  # no gap, no repeat
            self.positions[channel] = {"epoch": frame["epoch"], "offset": frame["offset"]}

    async def read(self, ws: ClientConnection, count: int) -> None:
        """Read frames until ``count`` messages more were taken."""
        total = sum(map(len, self.messages.values())) + count
        while sum(map(len, self.messages.values())) < total:
            self.take(json.loads(await ws.recv()))
