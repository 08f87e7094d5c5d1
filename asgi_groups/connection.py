"""One accepted WebSocket: identity, user, and a bounded outbound queue drained by a writer.

Publishing never awaits the client. An idle connection's frame goes to the ASGI ``send`` at
once, stepped synchronously like an eager task; only if ``send`` has to wait (a full transport)
does a writer task take it over. Later frames queue behind it, and the writer sends everything
queued in one wake-up. With ``coalesce`` on, frames always queue so that they can be joined.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Coroutine, Generator
from typing import TYPE_CHECKING, Any

from . import codes
from .errors import ConnectionClosed
from .frames import Frame, encode
from .limits import DEFAULT_QUEUE_LIMITS, QueueLimits
from .types import Send, UserLike

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["Connection"]

logger = logging.getLogger("asgi_groups.connection")

OPEN = 0
CLOSING = 1
CLOSED = 2


class Connection:
    """An accepted WebSocket registered with a :class:`~asgi_groups.Registry`.

    ``id`` is server-generated; ``user_id`` is ``str(user.id)`` for an authenticated user,
    else ``None``. Frames wait in a queue bounded by ``limits``; see :class:`QueueLimits`.
    """

    __slots__ = (
        "__weakref__",
        "_close_timer",
        "_killed",
        "_loop",
        "_owner",
        "_queue",
        "_queued_bytes",
        "_registry",
        "_send",
        "_state",
        "_writer",
        "close_code",
        "id",
        "limits",
        "user",
        "user_id",
    )

    def __init__(
        self,
        send: Send,
        user: UserLike | None = None,
        *,
        registry: Registry | None = None,
        limits: QueueLimits = DEFAULT_QUEUE_LIMITS,
        owner: asyncio.Task[Any] | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.user = user
        self.user_id: str | None = (
            str(user.id) if user is not None and user.is_authenticated else None
        )
        self.limits = limits
        self.close_code: int | None = None
        self._send = send
        self._registry = registry
        self._loop = asyncio.get_running_loop()
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
        if self._registry is None:
            return frozenset()
        return self._registry.groups_of(self)

    @property
    def queued(self) -> tuple[int, int]:
        """Frames and bytes waiting to be written."""
        return (len(self._queue) if self._queue else 0, self._queued_bytes)

    # -- outbound ----------------------------------------------------------------------------

    def deliver(self, frame: Frame) -> bool:
        """Queue ``frame`` without waiting; False when closed, dropped or overflowing (closed)."""
        if self._state:
            return False
        queue = self._queue
        if self._writer is None and not queue and self.limits.coalesce == 1:
            self._write_now(frame.event)
            return True
        if queue is None:
            queue = self._queue = deque()
        elif (
            queue
            and (
                len(queue) >= self.limits.max_messages
                or self._queued_bytes + frame.size > self.limits.max_bytes
            )
            and not self._make_room(queue, frame.size)
        ):
            return False
        queue.append(frame)
        self._queued_bytes += frame.size
        if self._writer is None:
            self._writer = self._loop.create_task(self._drain())
        return True

    async def send(self, message: Any) -> None:
        """Queue one message for this connection only (str, bytes, or JSON-able)."""
        if not self.deliver(encode(message)) and self._state:
            raise ConnectionClosed(f"connection {self.id} is closed")

    def close(self, code: int = codes.NORMAL, reason: str = "") -> None:
        """Close gracefully: frames already queued are written first, then the close frame."""
        if self._state:
            return
        self._state = CLOSING
        self.close_code = code
        self._detach()
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(Frame({"type": "websocket.close", "code": code, "reason": reason}, 0))
        if self._writer is None:
            self._writer = self._loop.create_task(self._drain())
        self._arm_close_timer()

    def abort(self, code: int = codes.TRY_AGAIN_LATER, reason: str = "") -> None:
        """Close now, discarding what is queued (slow reader, revocation)."""
        if self._state:
            return
        self._state = CLOSING
        self.close_code = code
        self._detach()
        self._queue = None
        self._queued_bytes = 0
        if self._writer is not None:
            self._writer.cancel()
        self._writer = self._loop.create_task(self._send_close(code, reason))
        self._arm_close_timer()

    async def wait_closed(self) -> None:
        """Wait (up to ``close_timeout``) until the close frame has been handed to the server."""
        writer = self._writer
        if writer is None or writer is asyncio.current_task():
            return
        await asyncio.wait({writer}, timeout=self.limits.close_timeout)

    # -- internals ---------------------------------------------------------------------------

    def _write_now(self, event: dict[str, Any]) -> None:
        """Run ``send(event)`` up to its first wait; a writer task finishes it if it waits."""
        sending = self._send(event)
        if not isinstance(sending, Coroutine):  # a Future or other awaitable: a task awaits it
            self._writer = self._loop.create_task(self._drain(sending))
            return
        try:
            waiting = sending.send(None)
        except StopIteration:
            return
        except Exception as exc:  # the client went away
            logger.debug("connection %s: send failed: %r", self.id, exc)
            self._gone()
            return
        self._writer = self._loop.create_task(self._drain(_Resumed(sending, waiting)))

    def _make_room(self, queue: deque[Frame], size: int) -> bool:
        limits = self.limits
        if limits.overflow == "drop_oldest":
            dropped = 0
            while queue and (
                len(queue) >= limits.max_messages or self._queued_bytes + size > limits.max_bytes
            ):
                self._queued_bytes -= queue.popleft().size
                dropped += 1
            if self._registry is not None:
                self._registry._count_dropped(dropped)
            return True
        if self._registry is not None:
            self._registry._count_slow_closed()
        logger.warning("closing slow connection %s: outbound queue full", self.id)
        self.abort(codes.TRY_AGAIN_LATER, "slow reader")
        return False

    async def _drain(self, started: Awaitable[Any] | None = None) -> None:
        send = self._send
        coalesce = self.limits.coalesce
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
                if coalesce > 1 and queue and "text" in event:
                    event = self._coalesced(queue, event, coalesce)
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
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None
            if self._queue is not None and not self._queue:
                self._queue = None

    def _coalesced(self, queue: deque[Frame], first: dict[str, Any], limit: int) -> dict[str, Any]:
        """Join the text frames at the head of ``queue`` (up to ``limit``) into one event."""
        parts = [first["text"]]
        while queue and len(parts) < limit and queue[0].size and "text" in queue[0].event:
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
        """The transport failed: stop writing and leave the registry."""
        self._state = CLOSED
        self._queue = None
        self._queued_bytes = 0
        self._detach()

    def _detach(self) -> None:
        if self._registry is not None:
            self._registry._detach(self)

    def _arm_close_timer(self) -> None:
        if self._close_timer is None:
            self._close_timer = self._loop.call_later(self.limits.close_timeout, self._kill)

    def _kill(self) -> None:
        """The close did not complete in time: cancel the owner so the server drops the socket."""
        self._close_timer = None
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        owner = self._owner
        if owner is not None and not owner.done():
            self._killed = True
            logger.warning("connection %s did not close in time; tearing it down", self.id)
            owner.cancel()

    def finish(self) -> None:
        """Final cleanup once the socket is done: cancel timers and the writer, leave the registry.

        Called by the code that owns the socket (``WsView`` does it in ``finally``).
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
        if self._registry is not None:
            self._registry._detach(self)

    def __repr__(self) -> str:
        state = ("open", "closing", "closed")[self._state]
        return f"<Connection {self.id[:8]} user={self.user_id!r} {state}>"


class _Resumed:
    """A coroutine that has already run up to a wait (it yielded ``waiting``), made awaitable
    again so that a task can drive it on exactly as if it had started it."""

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, waiting = self._coro, self._waiting
        while True:
            try:
                value = yield waiting
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    waiting = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    waiting = coro.send(value)
                except StopIteration as stop:
                    return stop.value
