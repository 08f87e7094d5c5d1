"""One accepted WebSocket: identity, user, and a bounded outbound queue drained by a writer.

Publishing never awaits the client. An idle connection's frame goes to the ASGI ``send`` at
once (see :mod:`~asgi_groups.eager`); only if ``send`` has to wait (a full transport) does a
writer task take it over. Later frames queue behind it, and the writer sends everything queued
in one wake-up. With ``coalesce`` on, frames always queue so that they can be joined.

A connection knows nothing of any registry. :meth:`Connection.deliver` reports what happened
as an outcome; every other way of leaving the open state (a close, the transport failing,
``finish``) calls the ``on_closed`` callback, at most once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from . import codes, eager
from .errors import ConnectionClosed
from .frames import Frame, encode
from .limits import DEFAULT_QUEUE_LIMITS, QueueLimits
from .stream import Stream
from .types import Send, UserLike

__all__ = ["DELIVERED", "FAILED", "NOT_OPEN", "OVERFLOWED", "Connection"]

logger = logging.getLogger("asgi_groups.connection")

#: Outcomes of :meth:`Connection.deliver`. Non-negative: delivered (written at once or queued);
#: the value is how many older frames were dropped to make room (``overflow="drop_oldest"``).
DELIVERED = 0
#: Closing or closed already: not delivered, nothing changed.
NOT_OPEN = -1
#: The queue was full: not delivered; the connection is now closing with 1013.
OVERFLOWED = -2
#: The transport failed: not delivered; the connection is closed.
FAILED = -3

OPEN = 0
CLOSING = 1
CLOSED = 2

ClosedCallback = Callable[["Connection"], None]
GroupsLookup = Callable[["Connection"], frozenset[str]]


def _no_groups(conn: Connection) -> frozenset[str]:
    return frozenset()


def _cancel_unstarted(send: eager.Resumed) -> Callable[[asyncio.Task[None]], None]:
    """A done callback: a writer cancelled before its first step still cancels its send."""
    return lambda task: send.cancel()


class Connection:
    """An accepted WebSocket whose frames go to an ASGI ``send``.

    ``id`` is server-generated; ``user_id`` is ``str(user.id)`` for an authenticated user,
    else ``None``. Frames wait in a queue bounded by ``limits``; see :class:`QueueLimits`.
    ``owner`` is the task serving the socket: it is cancelled when a close does not complete
    within ``limits.close_timeout``. ``groups_of`` answers :attr:`groups` (the registry's
    router does), so that the connection itself keeps no membership.
    """

    __slots__ = (
        "_close_timer",
        "_groups_of",
        "_killed",
        "_on_closed",
        "_owner",
        "_queue",
        "_queued_bytes",
        "_send",
        "_state",
        "_writer",
        "close_code",
        "dropped",
        "id",
        "limits",
        "opened_at",
        "overflowed",
        "stream",
        "user",
        "user_id",
    )

    def __init__(
        self,
        send: Send,
        user: UserLike | None = None,
        *,
        limits: QueueLimits = DEFAULT_QUEUE_LIMITS,
        owner: asyncio.Task[Any] | None = None,
        on_closed: ClosedCallback | None = None,
        groups_of: GroupsLookup = _no_groups,
        stream: Stream | None = None,
    ) -> None:
        self.id = os.urandom(16).hex()  # 128 random bits, as uuid4 has, without the UUID
        self.user = user
        self.user_id: str | None = (
            str(user.id) if user is not None and user.is_authenticated else None
        )
        self.limits = limits
        #: When it was registered (``time.time()``): a revocation closes only older sockets.
        self.opened_at = time.time()
        self.close_code: int | None = None
        #: Frames dropped for this connection to make room (``overflow="drop_oldest"``).
        self.dropped = 0
        #: True once the connection was closed because its queue overflowed (a slow reader).
        self.overflowed = False
        #: Positions and the resume hold of a recoverable connection (None: a plain one).
        self.stream = stream
        self._send = send
        self._on_closed = on_closed
        self._groups_of = groups_of
        asyncio.get_running_loop()  # made inside the loop that serves it: fail early otherwise
        self._owner = owner if owner is not None else asyncio.current_task()
        self._queue: deque[Frame] | None = None
        self._queued_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._state = OPEN
        self._close_timer: asyncio.TimerHandle | None = None
        self._killed = False

    # -- state -------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._state == OPEN

    @property
    def killed(self) -> bool:
        """True when the library tore the connection down (its owner task was cancelled)."""
        return self._killed

    @property
    def groups(self) -> frozenset[str]:
        """The groups this connection is in (empty once it has left the registry)."""
        return self._groups_of(self)

    @property
    def queued(self) -> tuple[int, int]:
        """Frames and bytes waiting to be written."""
        return (len(self._queue) if self._queue else 0, self._queued_bytes)

    # -- outbound ----------------------------------------------------------------------------

    def deliver(self, frame: Frame) -> int:
        """Write or queue ``frame`` without waiting; returns an outcome (see ``DELIVERED``).

        Never calls ``on_closed``: the caller acts on the outcome.
        """
        if self._state:
            return NOT_OPEN
        queue = self._queue
        if self._writer is None and not queue and self.limits.coalesce == 1:
            try:  # idle: write in place, the common case (see eager.py)
                rest = eager.start(self._send(frame.event))
            except Exception as exc:  # the client went away
                logger.debug("connection %s: send failed: %r", self.id, exc)
                self._gone()
                return FAILED
            if rest is not None:
                self._writer = asyncio.get_running_loop().create_task(self._drain(rest))
                if isinstance(rest, eager.Resumed):
                    self._writer.add_done_callback(_cancel_unstarted(rest))
            return DELIVERED
        dropped = DELIVERED
        if queue is None:
            queue = self._queue = deque()
        elif queue and (
            len(queue) >= self.limits.max_messages
            or self._queued_bytes + frame.size > self.limits.max_bytes
        ):
            dropped = self._make_room(queue, frame.size)
            if dropped < 0:
                return dropped
        queue.append(frame)
        self._queued_bytes += frame.size
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        return dropped

    async def send(self, message: Any) -> None:
        """Queue one message for this connection only (str, bytes, or JSON-able)."""
        outcome = self.deliver(encode(message))
        if outcome >= 0:
            return
        if outcome != NOT_OPEN:
            self._notify()
        raise ConnectionClosed(f"connection {self.id} is closed")

    def close(self, code: int = codes.NORMAL, reason: str = "") -> None:
        """Close gracefully: frames already queued are written first, then the close frame."""
        if self._state:
            return
        self._state = CLOSING
        self.close_code = code
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(Frame({"type": "websocket.close", "code": code, "reason": reason}, 0))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        self._arm_close_timer()
        self._notify()

    def abort(self, code: int = codes.TRY_AGAIN_LATER, reason: str = "") -> None:
        """Close now, discarding what is queued (slow reader, revocation)."""
        if self._state:
            return
        self._abort(code, reason)
        self._notify()

    async def wait_closed(self) -> None:
        """Wait (up to ``close_timeout``) until the close frame has been handed to the server."""
        writer = self._writer
        if writer is None or writer is asyncio.current_task():
            return
        await asyncio.wait({writer}, timeout=self.limits.close_timeout)

    async def drained(self) -> None:
        """Wait until every frame queued so far was handed to the server (or the socket closed).

        Backpressure for whoever queues many frames at once (a replay on resume).
        """
        while self._state == OPEN:
            writer = self._writer
            if writer is None or writer is asyncio.current_task():
                return
            await asyncio.wait({writer})

    def finish(self) -> None:
        """Final cleanup once the socket is done: cancel timers and the writer.

        Called by the code that owns the socket (``Registry.attached`` does it at the end).
        """
        self._state = CLOSED
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        self._writer = None
        self._queue = None
        self._queued_bytes = 0
        self._owner = None
        self._notify()

    # -- internals ---------------------------------------------------------------------------

    def _notify(self) -> None:
        """Call ``on_closed`` once."""
        callback, self._on_closed = self._on_closed, None
        if callback is not None:
            callback(self)

    def _make_room(self, queue: deque[Frame], size: int) -> int:
        """Apply the overflow policy: the number of frames dropped, or ``OVERFLOWED``."""
        limits = self.limits
        if limits.overflow == "drop_oldest":
            dropped = 0
            while queue and (
                len(queue) >= limits.max_messages or self._queued_bytes + size > limits.max_bytes
            ):
                self._queued_bytes -= queue.popleft().size
                dropped += 1
            self.dropped += dropped
            return dropped
        return self.overflow()

    def overflow(self) -> int:
        """Close as a slow reader (1013, queue discarded); returns ``OVERFLOWED``.

        Like :meth:`deliver`, never calls ``on_closed``: the caller acts on the outcome.
        """
        if self._state:
            return NOT_OPEN
        logger.warning("closing slow connection %s: outbound queue full", self.id)
        self.overflowed = True
        self._abort(codes.TRY_AGAIN_LATER, "slow reader")
        return OVERFLOWED

    def _abort(self, code: int, reason: str) -> None:
        self._state = CLOSING
        self.close_code = code
        self._queue = None
        self._queued_bytes = 0
        if self._writer is not None:
            self._writer.cancel()
        self._writer = asyncio.get_running_loop().create_task(self._send_close(code, reason))
        self._arm_close_timer()

    async def _drain(self, started: Awaitable[Any] | None = None) -> None:
        send = self._send
        coalesce = self.limits.coalesce
        json_only = self.limits.coalesce_json_only
        try:
            if started is not None:
                await started
            while True:
                queue = self._queue
                if not queue:
                    break
                frame = queue.popleft()
                self._queued_bytes -= frame.size
                event = frame.event
                if coalesce > 1 and queue and (frame.json if json_only else "text" in event):
                    event = self._coalesced(queue, event, coalesce, json_only)
                await send(event)
                if frame.size == 0 and event["type"] == "websocket.close":
                    self._state = CLOSED
                    self._queue = None
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client went away: nothing left to write to
            logger.debug("connection %s: send failed: %r", self.id, exc)
            self._gone()
            self._notify()
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None
            if self._queue is not None and not self._queue:
                self._queue = None

    def _coalesced(
        self, queue: deque[Frame], first: dict[str, Any], limit: int, json_only: bool = False
    ) -> dict[str, Any]:
        """Join the text frames (JSON ones only, if ``json_only``) at the head of ``queue`` (up
        to ``limit``) into one event."""
        parts = [first["text"]]
        while (
            queue
            and len(parts) < limit
            and queue[0].size
            and (queue[0].json if json_only else "text" in queue[0].event)
        ):
            frame = queue.popleft()
            self._queued_bytes -= frame.size
            parts.append(frame.event["text"])
        if len(parts) == 1:
            return first
        return {"type": "websocket.send", "text": "\n".join(parts)}

    async def _send_close(self, code: int, reason: str) -> None:
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("connection %s: close failed: %r", self.id, exc)
        finally:
            self._state = CLOSED
            if self._writer is asyncio.current_task():
                self._writer = None

    def _gone(self) -> None:
        """The transport failed: stop writing."""
        self._state = CLOSED
        self._queue = None
        self._queued_bytes = 0

    def _arm_close_timer(self) -> None:
        if self._close_timer is None:
            self._close_timer = asyncio.get_running_loop().call_later(
                self.limits.close_timeout, self._kill
            )

    def _kill(self) -> None:
        """The close did not complete in time: cancel the owner, so the app lets go of the socket.

        The server may still hold the transport until its buffer drains (uvicorn, hypercorn): with
        :func:`~asgi_groups.servers.listen_socket` the kernel resets it once stalled.
        """
        self._close_timer = None
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        owner = self._owner
        if owner is not None and not owner.done():
            self._killed = True
            logger.warning(
                "connection %s did not close in time; ending its task (the server drops the socket"
                " when its send stalls: asgi_groups.servers.listen_socket)",
                self.id,
            )
            owner.cancel()

    def __repr__(self) -> str:
        state = ("open", "closing", "closed")[self._state]
        return f"<Connection {self.id[:8]} user={self.user_id!r} {state}>"
