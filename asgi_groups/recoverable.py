"""``RecoverableView``: a ``WsView`` whose clients resume after a reconnect with nothing lost.

It speaks the protocol of docs/PROTOCOL.md: messages published on the connection's channels
arrive in ``ag.message`` envelopes with their position; a client that comes back says where it
was (``ag.hello``) and gets what it missed, in order and none twice, or is told why not
(``ag.welcome``). The channels are the server's choice, as for any view. Recovery needs the
registry's history (``Registry(history=HistoryLimits())``); without it every channel says
``"no history"``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Iterable
from typing import Any, ClassVar

from . import codes
from .backends.base import HistoryUnavailable
from .errors import BackendUnavailable, ConnectionClosed
from .frames import Frame
from .history import Entry, Position
from .limits import DEFAULT_PROTOCOL_COALESCE, KiB, QueueLimits
from .revalidation import EXPIRES_IN_KEY
from .stream import (
    HELLO,
    HISTORY,
    PREFIX,
    REFRESH,
    Stream,
    error_frame,
    history_frame,
    parse_positions,
    protocol_frame,
    request_id_of,
)
from .types import Receive, Scope, Send
from .views import WsView

__all__ = ["NOT_SUBSCRIBED", "NO_HISTORY", "NO_POSITION", "RecoverableView"]

logger = logging.getLogger("asgi_groups.recoverable")

#: Welcome reasons besides the history's own (``asgi_groups.history``).
NO_HISTORY = "no history"
NO_POSITION = "no position"
NOT_SUBSCRIBED = "not subscribed"
#: Close code for a protocol violation (a second hello).
PROTOCOL_ERROR = 4400


class _JsonStream(Stream):
    """A stream whose envelopes are marked as the single JSON documents they are, so that the
    connection may join them (``QueueLimits.coalesce_json_only``)."""

    __slots__ = ()

    def offer(self, channel: str, position: Position | None, frame: Frame) -> Frame | None:
        frame.json = True  # an ag.message envelope: compact JSON, one line
        return super().offer(channel, position, frame)

    def replay(self, channel: str, epoch: str, entries: Iterable[Entry]) -> list[Frame]:
        frames = super().replay(channel, epoch, entries)
        for frame in frames:
            frame.json = True
        return frames


_COALESCING: dict[tuple[QueueLimits, int], QueueLimits] = {}


def _coalescing(limits: QueueLimits, coalesce: int) -> QueueLimits:
    """``limits`` with JSON-only coalescing, made once per registry limits."""
    key = (limits, coalesce)
    found = _COALESCING.get(key)
    if found is None:
        found = _COALESCING[key] = dataclasses.replace(
            limits, coalesce=coalesce, coalesce_json_only=True
        )
    return found


class RecoverableView(WsView):
    """Subclass it like ``WsView``; frames that are not the protocol's reach ``on_receive``.

    ``hello_timeout``: seconds to wait for the client's ``ag.hello`` before starting it as a
    new client. ``max_history_limit``: most messages one ``ag.history`` request returns;
    ``max_history_bytes``: most payload bytes in one answer (the oldest are left out), so that
    it fits a client's frame limit (the ``websockets`` library's default is 1 MiB).
    ``coalesce`` (16): up to this many JSON frames waiting for one connection go as one
    WebSocket frame joined by ``"\n"``, which every client of the protocol splits (the
    official ones do); 1 turns it off. A registry whose ``QueueLimits`` set ``coalesce``
    keeps its own setting. Frames the app sends itself are never joined.
    """

    hello_timeout: ClassVar[float] = 10.0
    max_history_limit: ClassVar[int] = 100
    max_history_bytes: ClassVar[int] = 512 * KiB
    coalesce: ClassVar[int] = DEFAULT_PROTOCOL_COALESCE

    _hello_timer: asyncio.TimerHandle | None = None
    _late_hello: asyncio.Task[None] | None = None
    _hello_seen: bool = False
    _late_hello_answered: bool = False

    def new_stream(self) -> Stream:
        return _JsonStream(self.registry.limits.max_messages)

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        if self.accepted:
            return
        await super().accept(subprotocol, headers)
        conn = self.connection
        if conn is not None and self.coalesce > 1 and conn.limits.coalesce == 1:
            conn.limits = _coalescing(conn.limits, self.coalesce)
        if self.connection is not None and self.connection.is_open:
            self._hello_timer = asyncio.get_running_loop().call_later(
                self.hello_timeout, self._no_hello
            )

    async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer the protocol's frames; hand every other frame to the view's own handler."""
        text = self.kwargs.get("text")
        if text is not None and PREFIX in text:
            try:
                body = json.loads(text)
            except ValueError:
                body = None
            if isinstance(body, dict) and str(body.get("type", "")).startswith(PREFIX):
                await self._protocol(body)
                return
        await self.on_message(scope, receive, send)

    async def on_message(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Called per application frame (not the protocol's); the ASGI message is in
        ``self.kwargs``. The default passes it to the next class's ``on_receive``."""
        await super().on_receive(scope, receive, send)

    # -- the protocol ------------------------------------------------------------------------

    async def _protocol(self, body: dict[str, Any]) -> None:
        kind = body["type"]
        if kind == HELLO:
            if self._hello_seen:
                if self._late_hello is not None and not self._late_hello_answered:
                    # the client's hello, read after hello_timeout (a busy server): it was
                    # started without positions and told so (recovered: false)
                    self._late_hello_answered = True
                    detail = "hello after hello_timeout: started without positions"
                    await self._reply(error_frame("invalid", detail))
                    return
                await self.close(PROTOCOL_ERROR, "protocol error: a second hello")
                return
            self._hello_seen = True
            self._stop_hello_timer()
            try:
                positions = parse_positions(body.get("positions"))
            except ValueError as exc:
                await self._reply(error_frame("invalid", str(exc)))
                await self._resume({}, valid=False)
            else:
                await self._resume(positions)
        elif kind == HISTORY:
            await self._history(body)
        elif kind == REFRESH:  # the middleware renews token sockets; this one has none
            detail = "this socket's credential cannot be refreshed"
            await self._reply(error_frame("refresh_refused", detail, request_id_of(body)))
        else:
            detail = f"unknown protocol frame {kind[:40]!r}"
            await self._reply(error_frame("invalid", detail, request_id_of(body)))

    def _no_hello(self) -> None:
        """No hello in time: start the client as a new one (nothing to recover)."""
        self._hello_timer = None
        if not self._hello_seen:
            self._hello_seen = True
            # what the client missed is unknown: recovered is false, so that it reloads
            self._late_hello = asyncio.get_running_loop().create_task(self._resume({}, valid=False))

    async def _resume(self, positions: dict[str, Position], *, valid: bool = True) -> None:
        """Recover each channel the client gave a position for, then welcome and release."""
        conn = self.connection
        if conn is None or conn.stream is None or not conn.is_open:
            return
        stream, registry = conn.stream, self.registry
        channels = registry.channels_of(conn)
        statuses: dict[str, dict[str, Any]] = {}
        replays: list[tuple[str, str, Any]] = []
        recovered = valid
        try:
            for channel in channels:
                position = positions.get(channel)
                if not registry.keeps_history(channel):
                    stream.start(channel, None)
                    statuses[channel] = {"recovered": False, "reason": NO_HISTORY}
                    recovered = recovered and position is None
                    continue
                if position is None:
                    top, _ = await registry.recent(channel, 0)
                    start = stream.subscribed_at(channel, top)
                    stream.start(channel, start)
                    statuses[channel] = _status(start, False, NO_POSITION)
                    continue
                answer = await registry.recover(channel, position)
                if answer.recovered:
                    stream.start(channel, position)
                    replays.append((channel, answer.position.epoch, answer.entries))
                    statuses[channel] = _status(position, True)
                else:
                    start = stream.subscribed_at(channel, answer.position)
                    stream.start(channel, start)
                    statuses[channel] = _status(start, False, answer.reason)
                    recovered = False
        except (BackendUnavailable, HistoryUnavailable) as exc:
            logger.info("connection %s cannot resume now: %s", conn.id, exc)
            conn.close(codes.TRY_AGAIN_LATER, "history unavailable; try again")
            return
        for channel in positions.keys() - statuses.keys():
            statuses[channel] = {"recovered": False, "reason": NOT_SUBSCRIBED}
        welcome = {
            "type": "ag.welcome",
            "connection": conn.id,
            "user": conn.user_id,
            "recovered": recovered,
            "channels": statuses,
        }
        expires_in = self.scope.get(EXPIRES_IN_KEY)
        if expires_in is not None:
            welcome["expires_in"] = expires_in()  # the client refreshes its token in time
        if not await self._reply(protocol_frame(welcome)):
            return
        for channel, epoch, entries in replays:
            for frame in stream.replay(channel, epoch, entries):
                if not await self._reply(frame):
                    return
                if conn.queued[0] * 2 >= conn.limits.max_messages:
                    await conn.drained()  # a long replay waits for the client, not the queue
        for frame in stream.release():
            if not await self._reply(frame):
                return

    async def _history(self, body: dict[str, Any]) -> None:
        request_id = request_id_of(body)
        if request_id is None and body.get("id") is not None:
            await self._reply(error_frame("invalid", "id must be an integer or a short string"))
            return
        channel, limit = body.get("channel"), body.get("limit", self.max_history_limit)
        conn = self.connection
        if conn is None:
            return
        if type(limit) is not int or not 1 <= limit <= self.max_history_limit:
            detail = f"limit must be an integer from 1 to {self.max_history_limit}"
            await self._reply(error_frame("invalid", detail, request_id))
            return
        if not isinstance(channel, str) or channel not in self.registry.channels_of(conn):
            detail = "not a channel of this connection"
            await self._reply(error_frame("forbidden", detail, request_id))
            return
        try:
            top, entries = await self.registry.recent(channel, limit)
        except HistoryUnavailable as exc:
            await self._reply(error_frame("no_history", str(exc), request_id))
        except BackendUnavailable as exc:
            await self._reply(error_frame("unavailable", str(exc), request_id))
        else:
            budget, first = self.max_history_bytes, len(entries)
            while first and entries[first - 1].frame.size <= budget:
                first -= 1
                budget -= entries[first].frame.size
            await self._reply(history_frame(request_id, channel, top, entries[first:]))

    async def _reply(self, frame: Frame) -> bool:
        """Queue a frame for this connection only; False once it is closing."""
        conn = self.connection
        if conn is None:
            return False
        try:
            await conn.send(frame)
        except ConnectionClosed:
            return False
        return True

    def _stop_hello_timer(self) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None

    async def _finish(
        self, exc: BaseException | None, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        self._stop_hello_timer()
        late = self._late_hello
        if late is not None and not late.done():
            late.cancel()
        return await super()._finish(exc, scope, receive, send)


def _status(position: Position, recovered: bool, reason: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "epoch": position.epoch,
        "offset": position.offset,
        "recovered": recovered,
    }
    if reason is not None:
        status["reason"] = reason
    return status
