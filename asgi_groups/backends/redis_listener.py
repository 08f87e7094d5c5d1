"""The supervised listener: one pub/sub connection at a time, up/down state, reconnection.

A session connects, subscribes every wanted channel, waits for its barrier PONG, lets the
backend rewrite this process's presence, and only then marks the backend up. It reads until the
connection fails; a silent socket is caught by PINGs every quarter of ``health_check_interval``.
Any failure marks the backend down (once per outage, with the ``on_backend_down`` hook) and the
supervisor starts a new session after a capped, jittered exponential backoff. Should the
supervisor itself ever end while the backend runs, it is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from .base import Sink
from .redis_client import NETWORK_ERRORS, Timing
from .redis_subscriptions import Subscriptions
from .redis_wire import EnvelopeError, Names, unpack_control, unpack_frame, unpack_presence_event

__all__ = ["HealthCheckFailed", "Listener", "State", "cancel_all"]

logger = logging.getLogger("asgi_groups.redis")

HookFn = Callable[..., object]

#: Said when Redis closed the listener's connection (the limit is logged once reconnected).
CLOSED_HINT = (
    " - Redis closed it: a restart, a CLIENT KILL, or its client-output-buffer-limit for pub/sub"
    " (a listener too slow, or a message too large)"
)
#: Seconds between the warnings that Redis is still down (each attempt logs at DEBUG).
SAY_EVERY = 10.0
#: While Redis is unreachable, a connection attempt starts every this many seconds ...
PROBE_EVERY = 0.25
#: ... with at most this many waiting at once.
MAX_PROBES = 8


async def _probe(conn: Any) -> None:
    """Connect one spare connection and close it: can Redis be reached now?"""
    try:
        await conn.connect()
    finally:
        with contextlib.suppress(Exception):
            await conn.disconnect()


class HealthCheckFailed(RedisConnectionError):
    """Redis did not answer the listener's PING within ``health_check_interval``."""


class State:
    """Up or down, the hooks fired on each change, and the tasks those hooks left running."""

    def __init__(
        self,
        on_backend_down: Callable[[Exception], object] | None,
        on_backend_up: Callable[[], object] | None,
        on_resumed: Callable[[str, float], None] | None = None,
        on_interrupted: Callable[[str], None] | None = None,
    ) -> None:
        self.on_backend_down = on_backend_down
        self.on_backend_up = on_backend_up
        #: ``on_resumed(cause, down_at)``: receiving works again after a break (messages
        #: published during it may have been missed); called before ``on_backend_up``.
        self.on_resumed = on_resumed
        #: ``on_interrupted(cause)``: receiving stopped; called before ``on_backend_down``.
        self.on_interrupted = on_interrupted
        #: True while Redis cannot be reached (and before the backend started).
        self.down = True
        self.ever_up = False
        self.down_since = 0.0
        #: When (``time.time()``) and why the current or last break began.
        self.down_at = 0.0
        self.cause = ""
        self.reconnects = 0
        self.background: set[asyncio.Task[Any]] = set()

    def mark_down(self, error: Exception, heard_at: float | None = None) -> None:
        """Down because of ``error``; ``heard_at`` (``time.time()``): when Redis was last heard,
        the start of what may have been missed."""
        if self.down:
            return
        self.down = True
        self.down_since = time.monotonic()
        self.down_at = time.time() if heard_at is None else heard_at
        self.cause = f"{type(error).__name__}: {error}"
        logger.error(
            "Redis backend DOWN (%s)%s: sends raise BackendUnavailable, local sockets keep "
            "working; reconnecting",
            self.cause,
            CLOSED_HINT if self.closed_by_redis else "",
        )
        if self.on_interrupted is not None:
            try:
                self.on_interrupted(self.cause)
            except Exception:
                logger.exception("telling the connections of the break failed")
        self._fire(self.on_backend_down, error)

    @property
    def closed_by_redis(self) -> bool:
        """True when the current or last break began with Redis closing the connection."""
        return "closed by server" in self.cause

    def mark_up(self, channels: int) -> None:
        if not self.down:
            return
        self.down = False
        if self.ever_up:
            self.reconnects += 1
            logger.warning(
                "Redis backend UP again after %.1fs; %d channels re-subscribed",
                time.monotonic() - self.down_since,
                channels,
            )
            if self.on_resumed is not None:
                try:
                    self.on_resumed(self.cause, self.down_at)
                except Exception:
                    logger.exception("repairing the connections after the break failed")
            self._fire(self.on_backend_up)
        self.ever_up = True

    def spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        """Run ``coro`` in the background; the backend cancels it when closing."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def _fire(self, hook: HookFn | None, *args: object) -> None:
        if hook is None:
            return
        try:
            result = hook(*args)
        except Exception:
            logger.exception("Redis backend hook %r failed", hook)
            return
        if inspect.isawaitable(result):
            self.spawn(_await_hook(hook, result))


async def _await_hook(hook: HookFn, result: Awaitable[object]) -> None:
    try:
        await result
    except Exception:
        logger.exception("Redis backend hook %r failed", hook)


class Listener:
    """Reads the pub/sub connection and hands each message to the sink, once."""

    def __init__(
        self,
        names: Names,
        timing: Timing,
        subscriptions: Subscriptions,
        state: State,
        on_connected: Callable[[], Awaitable[None]],
    ) -> None:
        self.names = names
        self.timing = timing
        self.subscriptions = subscriptions
        self.state = state
        #: Run in each session once everything is subscribed, before the backend is marked up.
        self.on_connected = on_connected
        self.client: Redis | None = None
        self.sink: Sink | None = None
        self.closing = False
        self.supervisor: asyncio.Task[None] | None = None
        self.reader: asyncio.Task[None] | None = None
        self._last_rx = 0.0
        self.received = 0
        self.control_received = 0
        self.presence_events = 0
        self.errors = 0
        self.skipped = 0
        self._said = 0.0

    def start(self, client: Redis, sink: Sink, first: asyncio.Future[None]) -> None:
        """Start the supervisor; ``first`` gets the outcome of the first session."""
        self.client = client
        self.sink = sink
        self.closing = False
        self._start_supervisor(first)

    def _start_supervisor(self, first: asyncio.Future[None] | None) -> None:
        task = asyncio.get_running_loop().create_task(
            self._supervise(first), name="asgi_groups.redis.supervisor"
        )
        task.add_done_callback(self._supervisor_done)
        self.supervisor = task

    def _supervisor_done(self, task: asyncio.Task[None]) -> None:
        if self.closing or task is not self.supervisor:
            return
        # never expected: _supervise only ends when closing. Say so and start it again.
        exc = None if task.cancelled() else task.exception()
        logger.critical("Redis listener supervisor stopped unexpectedly (%r); restarting", exc)
        self.errors += 1
        self.state.mark_down(RedisConnectionError(f"the listener supervisor stopped: {exc!r}"))
        self._start_supervisor(None)

    async def _supervise(self, first: asyncio.Future[None] | None) -> None:
        """Run listener sessions forever, reconnecting with backoff after each failure."""
        attempt = 0
        while not self.closing:
            try:
                await self._session(first)
            except Exception as exc:
                error: Exception = exc
            else:  # pragma: no cover - a session only ends by raising
                error = RuntimeError("the listener stopped")
            if first is not None and not first.done():
                self.supervisor = None
                first.set_exception(error)
                return
            first = None
            if self.closing:
                return
            self.errors += 1
            if self.state.down:
                self._attempt_failed(attempt, error)
            else:
                attempt = 0
                self._said = time.monotonic()
                silent = asyncio.get_running_loop().time() - self._last_rx
                self.state.mark_down(error, time.time() - max(0.0, silent))
            initial, cap = self.timing.reconnect_backoff
            await asyncio.sleep(random.uniform(0, min(cap, initial * 2**attempt)))
            attempt = min(attempt + 1, 32)
            await self._reachable()

    async def _reachable(self) -> None:
        """Return once a connection to Redis can be made again.

        A new attempt starts every ``PROBE_EVERY`` seconds (jittered) while earlier ones still
        wait for their ``connect_timeout``: after a silent partition heals, a SYN sent before
        it would only be retried by the kernel a second or more later.
        """
        assert self.client is not None
        pool = self.client.connection_pool
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()
        try:
            while not self.closing:
                if len(pending) < MAX_PROBES:
                    conn = pool.make_connection()  # type: ignore[no-untyped-call]
                    pending.add(asyncio.ensure_future(_probe(conn)))
                # the next attempt starts after the interval, even if this one failed at once
                end = loop.time() + random.uniform(0.5, 1.5) * PROBE_EVERY
                while (left := end - loop.time()) > 0:
                    if not pending:
                        await asyncio.sleep(left)
                        break
                    done, pending = await asyncio.wait(
                        pending, timeout=left, return_when=asyncio.FIRST_COMPLETED
                    )
                    if any(not task.cancelled() and task.exception() is None for task in done):
                        return
        finally:
            await cancel_all(list(pending))

    def _attempt_failed(self, attempt: int, error: Exception) -> None:
        """One line per failed attempt at DEBUG; at WARNING, one every ``SAY_EVERY`` seconds."""
        logger.debug("Redis reconnect attempt %d failed: %s", attempt + 1, error)
        now = time.monotonic()
        if now - self._said >= SAY_EVERY:
            self._said = now
            logger.warning(
                "Redis still down after %.0fs (%d attempts; last: %s)",
                now - self.state.down_since,
                attempt + 1,
                error,
            )

    async def _session(self, first: asyncio.Future[None] | None) -> None:
        """One pub/sub connection: connect, subscribe everything, then read until it fails."""
        assert self.client is not None
        loop = asyncio.get_running_loop()
        pubsub = self.client.pubsub()
        reader: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(self.timing.attempt_timeout):
                await pubsub.connect()  # type: ignore[no-untyped-call]
                self._last_rx = loop.time()
                reader = loop.create_task(self._read(pubsub), name="asgi_groups.redis.listener")
                self.reader = reader
                barrier = await self.subscriptions.attach(pubsub)
                await asyncio.wait({barrier, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not barrier.done():
                    self._raise_reader_end(reader)
                await self.on_connected()
            self.state.mark_up(len(self.subscriptions.active))
            if first is not None and not first.done():
                first.set_result(None)
            await self._watch(pubsub, reader)
        finally:
            self.subscriptions.detach(pubsub)
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
            with contextlib.suppress(*NETWORK_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _watch(self, pubsub: PubSub, reader: asyncio.Task[None]) -> None:
        """PING when idle; fail when Redis has been silent for ``health_check_interval``."""
        loop = asyncio.get_running_loop()
        interval = self.timing.health_check_interval
        tick = interval / 4
        while not self.closing:
            await asyncio.wait({reader}, timeout=tick)
            if reader.done():
                self._raise_reader_end(reader)
            idle = loop.time() - self._last_rx
            if idle > interval:
                raise HealthCheckFailed(
                    f"no reply from Redis for {idle:.1f}s (health_check_interval={interval}s)"
                )
            if idle >= tick:
                try:
                    async with asyncio.timeout(self.timing.socket_timeout):
                        await pubsub.ping(b"hb")
                except TimeoutError as exc:
                    raise HealthCheckFailed("PING could not be written") from exc

    @staticmethod
    def _raise_reader_end(reader: asyncio.Task[None]) -> None:
        if reader.cancelled():
            raise RedisConnectionError("the listener task was cancelled")
        exc = reader.exception()
        if exc is not None:
            raise exc
        raise RedisConnectionError("the listener task stopped")

    async def _read(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await pubsub.get_message(timeout=None)
            self._last_rx = loop.time()
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            assert self.sink is not None
            channel: bytes = message["channel"]
            data: bytes = message["data"]
            names = self.names
            try:
                if channel == names.control_key:
                    op, args = unpack_control(data)
                    self.control_received += 1
                    self.sink.control(op, args)
                elif channel == names.presence_channel:
                    event = unpack_presence_event(data)
                    self.presence_events += 1
                    self.sink.presence_event(event)
                else:
                    frame, exclude, position = unpack_frame(data)
                    self.received += 1
                    self.sink.deliver(names.core_channel(channel), frame, exclude, position)
            except EnvelopeError as exc:
                self.skipped += 1
                logger.warning("skipping a message on %r: %s", channel, exc)
            except Exception:
                self.errors += 1
                logger.exception("error handling a message on %r", channel)
        elif kind == "pong":
            self.subscriptions.pong(message["data"])

    def tasks(self) -> list[asyncio.Task[Any]]:
        """What ``close`` cancels: the supervisor (the reader is its child)."""
        return [self.supervisor] if self.supervisor is not None else []


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` until they are done: a library call may swallow one cancellation."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=0.1)
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: a failure while closing is not worth a warning
