"""The Registry: the one object an application talks to — join, leave, send, presence, stats.

An async shell around the pure :class:`~asgi_groups.router.Router`: it asks the router who
receives what, performs the effects the router returns (backend subscriptions, presence), and
counts what each connection reports. Nothing below it calls back into it except a connection's
one ``on_closed`` callback and the backend's :class:`~asgi_groups.backends.base.Sink`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import inspect
import logging
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from . import codes
from .backends import Backend, MemoryBackend, backend_from_url
from .backends.base import HistoryUnavailable, PresenceEvent
from .channels import BROADCAST, MAX_GROUP_NAME, group_channel, user_channel, user_key
from .connection import NOT_OPEN, Connection
from .errors import (
    AsgiGroupsError,
    BackendUnavailable,
    ConnectionClosed,
    MessageTooLarge,
    RegistryClosed,
)
from .frames import Frame, encode
from .history import Entry, HistoryLimits, Position, Recovery
from .limits import DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_QUEUE_LIMITS, QueueLimits
from .router import Effect, PresenceChanged, Router, Subscribe, Unsubscribe
from .stream import Stream, error_frame, message_frame
from .types import Send, UserLike

if TYPE_CHECKING:
    from .sync import SyncRegistry

__all__ = [
    "MAX_GROUP_NAME",
    "Attachment",
    "Companion",
    "LoopClosed",
    "PresenceCallback",
    "PresenceEvent",
    "Registry",
    "Stats",
]

logger = logging.getLogger("asgi_groups.registry")

Exclude = Connection | str | None
#: ``handler(connection, cause)``, registered with ``Registry.on_missed``.
MissedHandler = Callable[[Connection, str], None]
#: ``callback(event)``, sync or async, registered with ``Registry.on_presence``.
PresenceCallback = Callable[[PresenceEvent], Awaitable[None] | None]

_SYNC_LOCK = threading.Lock()


class LoopClosed(RegistryClosed):
    """The registry ran on an event loop that has closed, and its backend (an instance given
    to it, not a URL) cannot be made again on the current loop."""


class Companion(Protocol):
    """Something that lives as long as a registry (e.g. a queue consumer): see ``add_companion``."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


#: Seconds of clock difference between processes allowed for when placing a revocation in
#: a break (a revocation made that long before it began is applied again after it).
CLOCK_SKEW = 1.0
#: What a recoverable connection is told when the backend stops receiving.
INTERRUPTED = error_frame(
    "interrupted", "live messages are interrupted; what is missed follows when they resume"
)
#: One publish in ``LATENCY_SAMPLE_MASK + 1`` is timed for ``Registry.publish_latency``.
LATENCY_SAMPLE_MASK = 63
#: Sampled publishes waiting to come back to this process at once, at most; and for how long.
MAX_TIMED = 16
TIMED_FOR = 10.0
#: Upper bounds (seconds) of the publish-latency histogram's buckets (then ``+Inf``).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: A published channel's first character → the kind of message counted.
_KINDS = {"g": "group", "u": "user", "*": "broadcast"}


def _payload(frame: Frame) -> object:
    """What identifies a published message when it comes back through the backend."""
    event = frame.event
    return event.get("text", event.get("bytes"))


class LatencyHistogram:
    """Bucket counts (not cumulative) of sampled durations: cheap to observe, read by metrics."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        #: One count per bound, and a last one for ``+Inf``.
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of a registry's counters (this process only; presence spans processes)."""

    connections: int
    users: int
    groups: int
    messages_sent: int
    deliveries: int
    dropped: int
    slow_closed: int
    backend: dict[str, Any] = field(default_factory=dict)
    #: Breaks in the backend survived (counted once repaired), and what the connections open
    #: then got: told that they may have missed messages, or given what they missed.
    breaks: int = 0
    missed_told: int = 0
    missed_recovered: int = 0


class Registry:
    """Groups, users and connections of this process, reaching other processes through a backend.

    ``Registry()`` / ``Registry("memory://")`` is single-process; ``Registry("redis://…")``
    spans processes (``pip install 'asgi-groups[redis]'``). Use ``async with Registry() as r``
    or ``await r.start()`` / ``await r.close()``. User ids are compared as strings.

    ``history`` (off by default) keeps the recent messages of every channel within its
    :class:`~asgi_groups.history.HistoryLimits`, so that recoverable clients can resume;
    ``history_for(channel)`` narrows it to some channels (``g:…``, ``u:…``, ``*``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        limits: QueueLimits = DEFAULT_QUEUE_LIMITS,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        history: HistoryLimits | None = None,
        history_for: Callable[[str], bool] | None = None,
        backend: Backend | None = None,
        **backend_options: Any,
    ) -> None:
        self.url = url or "memory://"
        self.router: Router[Connection] = Router()
        self.limits = limits
        self.max_message_size = max_message_size
        #: Makes the backend again on another loop (None: an instance was given, see ``start``).
        self._make_backend: Callable[[], Backend] | None = None
        if backend is None:
            self._make_backend = functools.partial(backend_from_url, url, **backend_options)
            backend = self._make_backend()
        self.backend = backend
        self.backend.bind(_Local(self))
        self.history = history
        self._history_for = history_for
        if history is not None:
            self.backend.keep_history(history)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._presence_callbacks: list[PresenceCallback] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sync: SyncRegistry | None = None
        self._started = False
        #: Set by ``close()``, cleared by ``start()``: a closed registry does not start on use.
        self._closed = False
        #: Serialises starts on one loop (the loop it belongs to, and the lock).
        self._start_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        #: Companions left running on a loop that has closed: closed again before a start.
        self._stale_companions = False
        self._messages_sent = 0
        self._deliveries = 0
        self._dropped = 0  # by connections that have left
        self._slow_closed = 0
        #: Breaks in the backend survived; connections told of a possible loss, or recovered.
        self._breaks = 0
        self._missed_told = 0
        self._missed_recovered = 0
        #: Counters for operators (read by :mod:`asgi_groups.metrics`; plain ints, bounded keys):
        #: publishes by kind, sockets closed by close code (``None``: the client or transport
        #: ended it), handshakes refused and inbound frames refused, by reason.
        self.published_by_kind = dict.fromkeys(("group", "user", "broadcast"), 0)
        self.closes: dict[int | None, int] = {}
        self.refused_handshakes = dict.fromkeys(("origin", "auth", "limit", "error"), 0)
        self.refused_frames = dict.fromkeys(
            ("invalid", "too_large", "rate_limited", "forbidden", "unknown_target"), 0
        )
        #: Sampled duration of a publish call (encode, backend; in memory, the local fan-out).
        self.publish_latency = LatencyHistogram()
        #: Sampled time from a publish in this process until its local recipients got it.
        self.delivery_latency = LatencyHistogram()
        self._timed: dict[object, float] = {}
        #: The deepest outbound queue (frames) seen by ``stats()`` or a metrics scrape.
        self.queue_peak = 0
        self._missed_handlers: dict[Connection, MissedHandler] = {}
        self._companions: list[Companion] = []
        #: Names this registry in the revocations it sends (its own clock needs no margin).
        self._origin = os.urandom(8).hex()
        #: Connections told when the current break began (not told again when it ends), and
        #: the recoverable ones among them whose live messages wait for their replay.
        self._told: set[Connection] = set()
        self._holding: set[Connection] = set()
        #: ``disconnect_user`` operations waiting for the backend, newest per user.
        self._revocations: dict[str, dict[str, Any]] = {}
        # bound once, shared by every connection (a bound method per socket costs 64 B)
        self._on_closed = self._detach
        self._groups_of = self.router.groups_of

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the backend, then the companions, on the running loop (idempotent).

        Nothing needs to call it: a send, ``presence``, ``disconnect_user``, ``connect`` and
        the other operations start a registry that was never started, on the loop that calls
        them, once however many call at once (a server without lifespan: daphne, uvicorn
        ``--lifespan off``; a script). A registry stopped by :meth:`close` stays closed
        (they raise ``RegistryClosed``) until ``start()`` is called again.

        A registry whose loop has closed (one event loop per test, ``asyncio.run`` twice)
        starts afresh on the running loop: what belonged to the old loop (its connections,
        tasks, backend connections) is dropped without touching that loop, with one warning.
        A backend made from the URL is made again; a ``MemoryBackend`` is kept (its history
        too); another backend instance cannot be, and ``LoopClosed`` says what to do.
        """
        loop = asyncio.get_running_loop()
        if self._started and self._loop is loop:
            self._closed = False
            return
        if self._start_lock is None or self._start_lock[0] is not loop:
            self._start_lock = (loop, asyncio.Lock())
        async with self._start_lock[1]:
            self._closed = False
            if self._started and self._loop_closed():
                self._forget_loop()
            if self._started:
                return
            if self._stale_companions:
                await self._close_companions()
            self._loop = loop
            await self.backend.start()
            await self.backend.subscribe(BROADCAST)
            self._started = True
            for companion in self._companions:
                await companion.start()

    async def _ready(self) -> None:
        """Before an operation: start the registry on first use, or afresh when its loop has
        closed; refuse once :meth:`close` stopped it."""
        if self._started and self._loop is asyncio.get_running_loop():
            return
        if not self.started:
            if self._closed:
                raise RegistryClosed(
                    "the registry is closed: start() it again, or use 'async with Registry()'"
                )
            await self.start()

    def _loop_closed(self) -> bool:
        return self._loop is not None and self._loop.is_closed()

    def _forget_loop(self) -> None:
        """The loop the registry ran on has closed: drop what belonged to it, awaiting nothing
        (nothing runs there any more), so that the next start begins afresh."""
        backend = self.backend
        if not isinstance(backend, MemoryBackend):
            if self._make_backend is None:
                raise LoopClosed(
                    f"the registry ran on an event loop that has closed, and its backend "
                    f"({type(backend).__name__}, given as an instance) cannot be made again: "
                    f"close the registry on its own loop ('async with Registry(...)', or "
                    f"'await registry.close()' before that loop ends), or give Registry a URL"
                )
            backend = self._make_backend()
            if self.history is not None:
                backend.keep_history(self.history)
            if self._presence_callbacks:
                backend.watch_presence()
        logger.warning(
            "the event loop this registry ran on has closed: its %d connections and %d tasks "
            "there are dropped, and it starts afresh on the current loop",
            len(self.router),
            len(self._tasks),
        )
        self._tasks.clear()
        for stale in (self._missed_handlers, self._told, self._holding, self._timed):
            stale.clear()
        self.router = Router()
        self._groups_of = self.router.groups_of
        self.backend = backend
        backend.bind(_Local(self))
        self._started = False
        self._stale_companions = bool(self._companions)

    async def _close_companions(self) -> None:
        """Close the companions, newest first (their own errors logged, not raised)."""
        self._stale_companions = False
        for companion in reversed(self._companions):
            try:
                await companion.close()
            except Exception:
                logger.exception("companion %r failed to close", companion)

    def add_companion(self, companion: Companion) -> Companion:
        """Start ``companion`` whenever this registry starts and close it first when it closes.

        So that whatever starts the registry (a lifespan, the first socket, ``async with``) also
        starts e.g. a queue consumer that publishes through it. Register before the start.
        """
        if self._started:
            raise RuntimeError("add companions before the registry starts")
        self._companions.append(companion)
        return companion

    async def close(self) -> None:
        """Close the companions, every local connection (1012, the server is going away) and
        the backend.

        After it, operations raise ``RegistryClosed`` until :meth:`start` is called again.
        A registry whose loop has closed is dropped as :meth:`start` says, without touching it.
        """
        self._closed = True
        if self._started and self._loop_closed():
            try:
                self._forget_loop()
            except LoopClosed:
                return  # nothing of it can be closed from this loop; a start says what to do
        if not self._started:
            if self._stale_companions:
                await self._close_companions()
            return
        self._started = False
        await self._close_companions()
        for conn in list(self.router.members()):
            conn.close(codes.SERVICE_RESTART, "server shutting down")
        await self.backend.close()
        pending = [task for task in self._tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    @property
    def started(self) -> bool:
        """True while it runs, on a loop that is not closed."""
        return self._started and not self._loop_closed()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` stopped it (until :meth:`start`); a registry never started
        is not closed: its first use starts it."""
        return self._closed

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the registry was started on (``None`` before the first start)."""
        return self._loop

    @property
    def sync(self) -> SyncRegistry:
        """Blocking send / presence / disconnect for sync code and other threads (see ``sync``)."""
        if self._sync is None:
            from .sync import SyncRegistry

            with _SYNC_LOCK:  # threads may race to the first use
                if self._sync is None:
                    self._sync = SyncRegistry(self)
        return self._sync

    async def __aenter__(self) -> Registry:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- connections -------------------------------------------------------------------------

    async def connect(
        self,
        send: Send,
        user: UserLike | None = None,
        *,
        owner: asyncio.Task[Any] | None = None,
        limits: QueueLimits | None = None,
        stream: Stream | None = None,
    ) -> Connection:
        """Register an accepted socket whose frames go to ``send``; returns its Connection.

        The caller owns the socket and calls ``conn.finish()`` when it is done; prefer
        :meth:`attached`, which does that.
        """
        await self._ready()
        conn = Connection(
            send,
            user,
            limits=limits or self.limits,
            owner=owner,
            on_closed=self._on_closed,
            groups_of=self._groups_of,
            stream=stream,
        )
        try:
            await self._perform(self.router.connect(conn))
        except BaseException:
            conn.finish()  # the user channel could not be subscribed: leave nothing behind
            raise
        logger.debug("connection %s of user %s connected", conn.id, conn.user_id)
        return conn

    def attached(
        self,
        send: Send,
        user: UserLike | None = None,
        groups: Iterable[str] = (),
        *,
        limits: QueueLimits | None = None,
        stream: Stream | None = None,
    ) -> Attachment:
        """One accepted socket's time in the registry: ``async with registry.attached(...)``.

        Connects, joins ``groups`` and, however the block ends, finishes the connection. ``user``
        is ignored unless authenticated. When the library tears the socket down (its close did
        not complete in time) it cancels the task in the block; that cancellation ends the block
        quietly. Every adapter and ``WsView`` go through here.
        """
        if user is not None and not user.is_authenticated:
            user = None
        return Attachment(self, send, user, groups, limits, stream)

    def get(self, connection_id: str) -> Connection | None:
        """The local connection with this id, if any."""
        return self.router.get(connection_id)

    def connections(self, user_id: object | None = None) -> list[Connection]:
        """Local connections, all or one user's."""
        if user_id is None:
            return list(self.router.members())
        return list(self.router.user(user_id))

    async def join(self, conn: Connection, group: str) -> None:
        """Put ``conn`` in ``group`` (no-op if already there)."""
        group_channel(group)
        if not conn.is_open or conn not in self.router:
            raise ConnectionClosed(f"connection {conn.id} is closed")
        effects = self.router.join(conn, group)
        try:
            await self._perform(effects)
        except BaseException:
            self._perform_now(self.router.leave(conn, group))
            raise

    async def leave(self, conn: Connection, group: str) -> None:
        """Take ``conn`` out of ``group`` (no-op if not there)."""
        self._perform_now(self.router.leave(conn, group))

    def groups_of(self, conn: Connection) -> frozenset[str]:
        """The groups ``conn`` is in (empty once it has left the registry)."""
        return self.router.groups_of(conn)

    # -- effects -----------------------------------------------------------------------------

    async def _perform(self, effects: list[Effect]) -> None:
        """Apply ``effects``: presence first, then wait for new subscriptions and presence."""
        if not effects:
            return
        self._perform_now(effects)
        presence = False
        for effect in effects:
            if type(effect) is Subscribe:
                await self.backend.subscribe(effect.channel)
            elif type(effect) is PresenceChanged:
                presence = True
        if presence:
            await self.backend.flush_presence()

    def _perform_now(self, effects: list[Effect]) -> None:
        """Apply the effects that do not wait: unsubscriptions and presence changes."""
        backend = self.backend
        for effect in effects:
            if type(effect) is Unsubscribe:
                backend.unsubscribe(effect.channel)
            elif type(effect) is PresenceChanged:
                backend.presence_changed(effect.group, effect.user_id, effect.count, effect.event)

    def _detach(self, conn: Connection) -> None:
        """``conn`` left the open state: take it out of every index, once."""
        if conn not in self.router:
            return
        if self._missed_handlers:
            self._missed_handlers.pop(conn, None)
        if self._told:
            self._told.discard(conn)
            self._holding.discard(conn)
        self._dropped += conn.dropped
        if conn.overflowed:
            self._slow_closed += 1
        code = conn.close_code
        self.closes[code] = self.closes.get(code, 0) + 1
        logger.debug("connection %s of user %s closed (%s)", conn.id, conn.user_id, code)
        self._perform_now(self.router.disconnect(conn))

    # -- sending -----------------------------------------------------------------------------

    async def send_group(
        self, group: str, message: Any, *, exclude: Exclude = None, history: bool = True
    ) -> Position | None:
        """Send to every connection in ``group``, in every process.

        Returns the message's position in the group's history (None when it keeps none).
        ``history=False`` sends a message that is not kept (state such as presence, which a
        resuming client gets fresh rather than replayed).
        """
        return await self._publish(group_channel(group), message, exclude, history)

    async def send_user(
        self, user_id: object, message: Any, *, exclude: Exclude = None, history: bool = True
    ) -> Position | None:
        """Send to every connection (every tab, every process) of one user."""
        return await self._publish(user_channel(user_id), message, exclude, history)

    async def broadcast(
        self, message: Any, *, exclude: Exclude = None, history: bool = True
    ) -> Position | None:
        """Send to every connection in every process."""
        return await self._publish(BROADCAST, message, exclude, history)

    def frame(self, message: Any) -> Frame:
        """Encode ``message`` once, refusing it when over ``max_message_size``."""
        frame = encode(message)
        if frame.size > self.max_message_size:
            raise MessageTooLarge(
                f"message of {frame.size} bytes is over max_message_size={self.max_message_size}"
            )
        return frame

    async def _publish(
        self, channel: str, message: Any, exclude: Exclude, history: bool = True
    ) -> Position | None:
        if not self._started or self._loop is not asyncio.get_running_loop():
            await self._ready()
        frame = self.frame(message)
        exclude_id = exclude.id if isinstance(exclude, Connection) else exclude
        sampled = not self._messages_sent & LATENCY_SAMPLE_MASK
        start = 0.0
        if sampled:
            start = time.perf_counter()
            self._await_delivery(frame, start)
        position = await self.backend.publish(
            channel, frame, exclude_id, history and self.keeps_history(channel)
        )
        if sampled:
            self.publish_latency.observe(time.perf_counter() - start)
        self._messages_sent += 1
        self.published_by_kind[_KINDS[channel[0]]] += 1
        return position

    def keeps_history(self, channel: str) -> bool:
        """True when messages published on ``channel`` are kept for recovery."""
        if self.history is None:
            return False
        return self._history_for is None or self._history_for(channel)

    def _deliver_local(
        self, channel: str, frame: Frame, exclude: str | None, position: Position | None = None
    ) -> int:
        """Queue ``frame`` for every local recipient of ``channel``; returns how many took it.

        A recoverable connection gets the frame in an envelope with its channel and position
        (built once), through its stream. Connections that closed while taking it (slow
        reader, broken transport) leave the indexes after the loop, never during it.
        """
        delivered = 0
        closed: list[Connection] | None = None
        envelope: Frame | None = None
        for conn in self.router.recipients(channel, exclude):
            stream = conn.stream
            if stream is None:
                outcome = conn.deliver(frame)
            else:
                if envelope is None:
                    envelope = message_frame(channel, position, frame)
                now = stream.offer(channel, position, envelope)
                if now is not None:
                    outcome = conn.deliver(now)
                elif stream.overflowed:
                    outcome = conn.overflow()
                else:
                    continue  # held for the resume in progress, or a duplicate
            if outcome >= 0:
                delivered += 1
            elif outcome != NOT_OPEN:  # overflowed or failed: it is closing now
                if closed is None:
                    closed = []
                closed.append(conn)
        if closed is not None:
            for conn in closed:
                self._detach(conn)
        self._deliveries += delivered
        if self._timed:  # a sampled publish of this process coming back: how long it took
            start = self._timed.pop(_payload(frame), None)
            if start is not None:
                self.delivery_latency.observe(time.perf_counter() - start)
        return delivered

    def _await_delivery(self, frame: Frame, start: float) -> None:
        """Time a sampled publish until this process hands it to its own recipients (through
        the backend: with Redis, the round trip); a few at once, forgotten when stale."""
        timed = self._timed
        if len(timed) >= MAX_TIMED:
            stale = start - TIMED_FOR
            for key in [key for key, at in timed.items() if at < stale]:
                del timed[key]
            if len(timed) >= MAX_TIMED:
                return
        timed[_payload(frame)] = start

    # -- history -----------------------------------------------------------------------------

    def channels_of(self, conn: Connection) -> list[str]:
        """Every channel ``conn`` receives: its groups, its user, and broadcast."""
        channels = [group_channel(group) for group in sorted(self.router.groups_of(conn))]
        if conn.user_id is not None:
            channels.append(user_channel(conn.user_id))
        channels.append(BROADCAST)
        return channels

    async def recover(self, channel: str, position: Position) -> Recovery:
        """What ``channel`` published after ``position``, or why that cannot be told.

        ``HistoryUnavailable`` when the channel keeps no history. The caller decides who may
        ask about which channel (a recoverable view: only its connection's channels).
        """
        await self._ready()
        self._require_history(channel)
        return await self.backend.recover(channel, position)

    async def recent(self, channel: str, limit: int) -> tuple[Position, list[Entry]]:
        """The newest position of ``channel`` and up to ``limit`` newest kept messages."""
        await self._ready()
        self._require_history(channel)
        return await self.backend.latest(channel, limit)

    def _require_history(self, channel: str) -> None:
        if not self.keeps_history(channel):
            raise HistoryUnavailable(f"channel {channel!r} keeps no history")

    # -- presence and remote control ---------------------------------------------------------

    async def presence(self, group: str) -> dict[str, int]:
        """``{user_id: connections}`` of the users in ``group``, over every process."""
        group_channel(group)
        await self._ready()
        return await self.backend.presence(group)

    async def disconnect_user(
        self, user_id: object, code: int = codes.UNAUTHORIZED, reason: str = ""
    ) -> None:
        """Close every socket of ``user_id`` in every process (logout, ban, password change).

        This process's sockets close at once, whatever the backend's state. The other
        processes are told through the backend; while it is unreachable the revocation waits
        here and goes out when it is back, and a process that missed it (partitioned) applies
        it when it reconnects. It never raises for the backend's sake: a logout always holds.
        """
        await self._ready()
        key = user_key(user_id)
        args = {
            "user_id": key,
            "code": code,
            "reason": reason,
            "at": time.time(),
            "origin": self._origin,
        }
        self._apply_control("disconnect_user", args)
        try:
            await self.backend.control("disconnect_user", args)
        except BackendUnavailable as exc:
            self._revocations[key] = args
            logger.warning(
                "user %s disconnected here; other processes are told when the backend is back (%s)",
                key,
                exc,
            )

    async def join_user(self, user_id: object, group: str) -> None:
        """Put every connection of ``user_id``, in every process, in ``group``."""
        group_channel(group)
        await self._ready()
        await self.backend.control("join_user", {"user_id": user_key(user_id), "group": group})

    async def leave_user(self, user_id: object, group: str) -> None:
        """Take every connection of ``user_id``, in every process, out of ``group``."""
        group_channel(group)
        await self._ready()
        await self.backend.control("leave_user", {"user_id": user_key(user_id), "group": group})

    def _apply_control(self, op: str, args: dict[str, Any]) -> None:
        """Apply a remote-control operation from any process to this process's connections."""
        conns = list(self.router.user(args.get("user_id")))
        if op == "disconnect_user":
            # sockets opened after the revocation (a new login) stay; another process's clock
            # may be behind ours, so its revocations also take sockets up to CLOCK_SKEW newer
            at = float(args.get("at", math.inf))
            if args.get("origin") != self._origin:
                at += CLOCK_SKEW
            for conn in conns:
                if conn.opened_at <= at:
                    conn.close(
                        int(args.get("code", codes.UNAUTHORIZED)), str(args.get("reason", ""))
                    )
        elif op == "join_user":
            group = str(args["group"])
            for conn in conns:
                effects = self.router.join(conn, group)
                self._perform_now(effects)
                for effect in effects:
                    if type(effect) is Subscribe:
                        self._spawn(self.backend.subscribe(effect.channel))
        elif op == "leave_user":
            for conn in conns:
                self._perform_now(self.router.leave(conn, str(args["group"])))
        else:
            logger.warning("ignoring unknown control operation %r", op)

    # -- after a break in the backend --------------------------------------------------------

    def _interrupted(self, cause: str) -> None:
        """The backend stopped receiving: tell every connection now, however long it lasts.

        Recoverable connections get an ``ag.error`` "interrupted" frame and keep their socket
        (what they miss is replayed when the backend is back); any other connection is told
        it may miss messages (:meth:`on_missed`, else a 1013 close).
        """
        if not self._started:
            return
        told = self._told
        for conn in list(self.router.members()):
            if not conn.is_open:
                continue
            told.add(conn)
            stream = conn.stream
            if stream is not None and stream.positions:
                if not stream.holding:  # (else a resume is in progress: it recovers itself)
                    # held from now: a live message must not pass the gap before its replay
                    stream.hold()
                    self._holding.add(conn)
                self._deliver_one(conn, INTERRUPTED)
            else:
                self._tell_missed(conn, cause)
                self._missed_told += 1

    def _resumed(self, cause: str, down_at: float) -> None:
        """The backend receives again after a break: repair what the break may have cost."""
        if self._started:
            told, self._told = self._told, set()
            holding, self._holding = self._holding, set()
            self._spawn(self._after_break(cause, down_at, told, holding))

    async def _after_break(
        self,
        cause: str,
        down_at: float,
        already: set[Connection],
        holding: set[Connection],
    ) -> None:
        """Send the revocations that waited, apply those missed, then repair each connection.

        ``already``: the connections told when the break began; ``holding``: the recoverable
        ones among them, whose live messages wait. Those get what they missed from history, in
        place; any other connection not told yet is told now (:meth:`on_missed`).
        """
        try:
            await self._catch_up_revocations(down_at)
        except Exception:  # the repair below must run whatever happens here
            logger.exception("revocations not caught up after the break")
        recoveries: dict[tuple[str, Position], asyncio.Task[Recovery]] = {}
        told = recovered = 0
        for conn in list(self.router.members()):
            if not conn.is_open:
                continue
            if conn in holding:
                recovered += 1
                self._spawn(self._recover_in_place(conn, recoveries, cause))
            elif conn.stream is not None and conn.stream.positions:
                continue  # it was resuming when the break began: its resume recovers it
            elif conn not in already:  # opened during the break: not told yet
                told += 1
                self._tell_missed(conn, cause)
        self._missed_told += told
        self._breaks += 1
        logger.warning(
            "backend back after a break (%s): %d connections recover what they missed, "
            "%d are told they may have missed messages",
            cause,
            recovered,
            told,
        )

    async def _catch_up_revocations(self, down_at: float) -> None:
        """Send the revocations that waited for the backend; apply those made meanwhile."""
        for user_id, args in list(self._revocations.items()):
            try:
                await self.backend.control("disconnect_user", args)
            except BackendUnavailable:
                return  # down again: the next break retries
            self._revocations.pop(user_id, None)
        with contextlib.suppress(BackendUnavailable):
            users = list(self.router.user_ids())
            for args in (await self.backend.revocations(users)).values():
                if float(args.get("at", 0.0)) >= down_at - CLOCK_SKEW:
                    self._apply_control("disconnect_user", args)

    async def _recover_in_place(
        self,
        conn: Connection,
        recoveries: dict[tuple[str, Position], asyncio.Task[Recovery]],
        cause: str,
    ) -> None:
        """Replay what ``conn`` missed on each channel it has a position for; live messages
        wait meanwhile. A channel that cannot be recovered closes it with 1013: its client
        resumes, and the welcome says what could not be given back."""
        stream = conn.stream
        if stream is None:
            return
        complete = True
        try:
            for channel, last in list(stream.positions.items()):
                key = (channel, last)
                task = recoveries.get(key)
                if task is None:  # connections at the same place share one read
                    task = recoveries[key] = asyncio.ensure_future(self.recover(channel, last))
                answer = await asyncio.shield(task)
                if not answer.recovered:
                    complete = False
                    continue
                for frame in stream.replay(channel, answer.position.epoch, answer.entries):
                    if not self._deliver_one(conn, frame):
                        return
                if conn.queued[0] * 2 >= conn.limits.max_messages:
                    await conn.drained()
        except (AsgiGroupsError, OSError) as exc:
            logger.info("connection %s cannot recover after the break: %s", conn.id, exc)
            complete = False
        finally:
            for frame in stream.release():
                if not self._deliver_one(conn, frame):
                    break
        if not complete and conn.is_open:
            # its client resumes after a reconnect: the welcome says what could not be given back
            self._missed_told += 1
            conn.close(codes.TRY_AGAIN_LATER, "messages missed that history cannot give back")
        elif complete:
            self._missed_recovered += 1

    def on_missed(self, conn: Connection, handler: MissedHandler) -> None:
        """Call ``handler(conn, cause)`` instead of closing ``conn`` when it may have missed
        messages (a break in the backend that history could not repair)."""
        self._missed_handlers[conn] = handler

    def _tell_missed(self, conn: Connection, cause: str) -> None:
        """Tell ``conn`` it may have missed messages: its handler, else close it with 1013
        (clients reconnect, reload, and resume where they can)."""
        handler = self._missed_handlers.get(conn)
        if handler is None:
            conn.close(codes.TRY_AGAIN_LATER, "messages may have been missed; reconnect")
            return
        try:
            handler(conn, cause)
        except Exception:
            logger.exception("missed-messages handler of connection %s failed", conn.id)
            conn.close(codes.TRY_AGAIN_LATER, "messages may have been missed; reconnect")

    def _deliver_one(self, conn: Connection, frame: Frame) -> bool:
        """Deliver to one connection; False (and the connection detached) if it closed."""
        outcome = conn.deliver(frame)
        if outcome >= 0:
            return True
        if outcome != NOT_OPEN:
            self._detach(conn)
        return False

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """A background task ended: forget it, and say so if it failed."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task %r failed", task, exc_info=task.exception())

    # -- presence events ---------------------------------------------------------------------

    def on_presence(self, callback: PresenceCallback) -> Callable[[], None]:
        """Call ``callback(event)`` (sync or async) on presence events, from every process.

        An event (``{"type": "presence", "group", "user_id", "event": "join" | "leave"}``)
        says a user's first connection in some process joined a group, or its last one left.
        Returns a function that removes the callback.
        """
        self._presence_callbacks.append(callback)
        self.backend.watch_presence()

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._presence_callbacks.remove(callback)

        return remove

    def _presence_event(self, event: PresenceEvent) -> None:
        """Run the presence callbacks soon (never inside the membership change that caused it)."""
        if not self._presence_callbacks:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._run_presence_callbacks(event)
        else:
            loop.call_soon(self._run_presence_callbacks, event)

    def _run_presence_callbacks(self, event: PresenceEvent) -> None:
        for callback in list(self._presence_callbacks):
            try:
                result = callback(event)
            except Exception:
                logger.exception("presence callback %r failed", callback)
                continue
            if inspect.isawaitable(result):
                # the callback's own awaitable is the task: cancelled at close() before it ran,
                # it is still closed properly (no "never awaited" warning)
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(functools.partial(self._callback_done, callback))

    def _callback_done(self, callback: object, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("presence callback %r failed", callback, exc_info=exc)

    # -- stats -------------------------------------------------------------------------------

    def queue_depth(self) -> int:
        """The deepest outbound queue now (frames), raising ``queue_peak`` if deeper."""
        depth = max((conn.queued[0] for conn in self.router.members()), default=0)
        if depth > self.queue_peak:
            self.queue_peak = depth
        return depth

    def stats(self) -> Stats:
        connections, users, groups = self.router.counts
        dropped = self._dropped + sum(conn.dropped for conn in self.router.members())
        return Stats(
            connections=connections,
            users=users,
            groups=groups,
            messages_sent=self._messages_sent,
            deliveries=self._deliveries,
            dropped=dropped,
            slow_closed=self._slow_closed,
            backend=self.backend.stats(),
            breaks=self._breaks,
            missed_told=self._missed_told,
            missed_recovered=self._missed_recovered,
        )

    def __repr__(self) -> str:
        return f"<Registry {self.url} connections={len(self.router)}>"


_Pending = tuple[
    Registry, Send, "UserLike | None", Iterable[str], "QueueLimits | None", "Stream | None"
]


class Attachment:
    """What :meth:`Registry.attached` returns: an async context manager yielding the Connection.

    A plain class rather than a generator, so that an open socket keeps no suspended frame.
    """

    __slots__ = ("_pending", "connection")

    def __init__(
        self,
        registry: Registry,
        send: Send,
        user: UserLike | None,
        groups: Iterable[str],
        limits: QueueLimits | None,
        stream: Stream | None = None,
    ) -> None:
        # what entering needs, dropped once entered: an open socket keeps two references
        self._pending: _Pending | None = (registry, send, user, groups, limits, stream)
        self.connection: Connection | None = None

    async def __aenter__(self) -> Connection:
        if self._pending is None:
            raise RuntimeError("an attachment is entered once")
        (registry, send, user, groups, limits, stream), self._pending = self._pending, None
        conn = self.connection = await registry.connect(send, user, limits=limits, stream=stream)
        try:
            for group in groups:
                if not conn.is_open:
                    break  # revoked while an earlier join waited for the backend
                await registry.join(conn, group)
        except BaseException:
            conn.finish()
            raise
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        conn = self.connection
        return False if conn is None else self.release(conn, exc_type)

    @staticmethod
    def release(conn: Connection, exc_type: type[BaseException] | None) -> bool:
        """What leaving the block does: finish ``conn``; True when ``exc_type`` is the
        library's own teardown of the socket (then the task's cancellation is taken back).

        For code that entered an attachment and keeps only its connection (``WsView``).
        """
        conn.finish()
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError) and conn.killed:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
                return True  # the library tore the socket down: end the block quietly
        return False


class _Local:
    """The registry's local side, as its backend sees it (a :class:`~.backends.base.Sink`)."""

    __slots__ = (
        "control",
        "deliver",
        "interrupted",
        "presence",
        "presence_event",
        "presence_snapshot",
        "resumed",
    )

    def __init__(self, registry: Registry) -> None:
        self.deliver = registry._deliver_local
        self.interrupted = registry._interrupted
        self.resumed = registry._resumed
        self.control = registry._apply_control
        self.presence_event = registry._presence_event
        self.presence = registry.router.presence
        self.presence_snapshot = registry.router.presence_snapshot
