"""The Redis backend: one PUBLISH per send, each process subscribed only to what it needs.

Membership lives in the process. Every process subscribes to ``{prefix}:<channel>`` for the
groups and users it has local connections for, plus broadcast and a control channel; its
listener hands each message to the local registry once. Redis holds nothing but presence
entries, which expire with the process that wrote them.

The listener is supervised: a silent socket is caught by PINGs every ``health_check_interval``;
any failure marks the backend down (sends raise ``BackendUnavailable``, local sockets keep
working), fires ``on_backend_down``, and reconnects with capped, jittered exponential backoff,
re-subscribing every channel before ``on_backend_up`` fires. Pub/sub is at-most-once: what is
published during an outage is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ..errors import BackendUnavailable
from ..frames import Frame
from .base import BROADCAST, Backend, PresenceEvent

__all__ = [
    "DEFAULT_PREFIX",
    "ENVELOPE_VERSION",
    "EnvelopeError",
    "RedisBackend",
    "pack_frame",
    "unpack_frame",
]

logger = logging.getLogger("asgi_groups.redis")

DEFAULT_PREFIX = "asgi_groups"

#: First byte of every message this backend publishes; a listener skips other versions.
ENVELOPE_VERSION = 1
FLAG_BINARY = 0x01
#: Longest ``exclude`` connection id an envelope carries (ids are 32 hex characters).
MAX_EXCLUDE_ID = 255
#: Channels subscribed in one SUBSCRIBE command when (re)connecting.
SUBSCRIBE_BATCH = 1000

#: Internal channel names; the core's channels are ``g:…``, ``u:…`` and ``*``, so never these.
CONTROL = "control"
PRESENCE = "presence"

_NETWORK_ERRORS = (RedisError, OSError)

HookFn = Callable[..., object]


class EnvelopeError(ValueError):
    """A message on the wire is not an envelope this version understands."""


class HealthCheckFailed(RedisConnectionError):
    """Redis did not answer the listener's PING within ``health_check_interval``."""


# -- the wire envelope -------------------------------------------------------------------------
#
#   byte 0      version (1)
#   byte 1      flags: bit 0 set = binary frame, else UTF-8 text; other bits reserved (0)
#   byte 2      n = length of the exclude connection id (0 = none)
#   3 .. 3+n    exclude id (UTF-8)
#   3+n ..      payload, exactly as the sender encoded it once


def pack_frame(frame: Frame, exclude: str | None) -> bytes:
    """Encode ``frame`` (and the connection id to skip) into one envelope."""
    excluded = exclude.encode() if exclude else b""
    if len(excluded) > MAX_EXCLUDE_ID:
        raise ValueError(f"exclude ids are at most {MAX_EXCLUDE_ID} bytes")
    text: str | None = frame.event.get("text")
    if text is not None:
        header = bytes((ENVELOPE_VERSION, 0, len(excluded)))
        return header + excluded + text.encode("utf-8", "surrogatepass")
    header = bytes((ENVELOPE_VERSION, FLAG_BINARY, len(excluded)))
    return header + excluded + bytes(frame.event["bytes"])


def unpack_frame(data: bytes) -> tuple[Frame, str | None]:
    """Decode an envelope into ONE frame shared by every local recipient, and the exclude id."""
    if len(data) < 3 or data[0] != ENVELOPE_VERSION:
        version = data[0] if data else None
        raise EnvelopeError(f"unknown envelope version {version!r}")
    flags = data[1]
    if flags & ~FLAG_BINARY:
        raise EnvelopeError(f"unknown envelope flags {flags:#04x}")
    end = 3 + data[2]
    exclude = data[3:end].decode("utf-8", "replace") or None
    payload = data[end:]
    if flags & FLAG_BINARY:
        return Frame.binary(payload), exclude
    text = payload.decode("utf-8", "surrogatepass")
    return Frame({"type": "websocket.send", "text": text}, len(payload)), exclude


def _pack_json(obj: object) -> bytes:
    return bytes((ENVELOPE_VERSION,)) + json.dumps(obj, separators=(",", ":")).encode()


def _unpack_json(data: bytes) -> Any:
    if not data or data[0] != ENVELOPE_VERSION:
        raise EnvelopeError(f"unknown envelope version {data[0] if data else None!r}")
    return json.loads(data[1:])


# -- URLs ------------------------------------------------------------------------------------


def safe_url(url: str) -> str:
    """``url`` with its password masked, for logs and error messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


def parse_sentinel_url(url: str) -> dict[str, Any]:
    """``redis+sentinel://[user:password@]host:port[,host:port…]/service_name[/db]``."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:
            host, port = port, "26379"
        sentinels.append((host.strip("[]"), int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("a redis+sentinel:// URL names the service: redis+sentinel://h:p/mymaster")
    result: dict[str, Any] = {"sentinels": sentinels, "service_name": unquote(path[0])}
    if len(path) > 1:
        result["db"] = int(path[1])
    if userinfo:
        user, _, password = userinfo.partition(":")
        if user:
            result["username"] = unquote(user)
        if password:
            result["password"] = unquote(password)
    for key, value in parse_qsl(parts.query):
        if key == "db":
            result["db"] = int(value)
    return result


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` until they are done: a library call may swallow one cancellation."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=0.1)
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: a failure while closing is not worth a warning


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _client_name(prefix: str, process_id: str) -> str:
    name = f"{prefix}:{process_id}"
    return "".join(c if 32 < ord(c) < 127 else "_" for c in name)


# -- the backend -----------------------------------------------------------------------------


class RedisBackend(Backend):
    """Fan-out through Redis pub/sub; see the module docstring for the guarantees.

    ``prefix`` namespaces every channel and key. ``health_check_interval``: seconds of silence
    after which the listener's connection is declared dead (it PINGs well before that).
    ``presence_ttl``: lifetime of this process's presence entries, refreshed every third of
    it. ``reconnect_backoff``: (first delay, cap) in seconds, with full jitter.
    ``socket_timeout`` / ``connect_timeout`` bound every command and connection attempt, so a
    send during an outage fails fast. ``max_connections`` bounds the command pool.
    ``sentinels`` + ``service_name`` (or a ``redis+sentinel://`` URL) find the master through
    Redis Sentinel. ``on_backend_down(error)`` / ``on_backend_up()`` (sync or async) are called
    once per outage. ``listen=False`` makes a publish-only backend (scripts, the CLI).
    ``redis_options`` go to redis-py's connection pool as they are.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        health_check_interval: float = 5.0,
        presence_ttl: float = 30.0,
        reconnect_backoff: tuple[float, float] = (0.1, 5.0),
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        max_connections: int = 50,
        sentinels: Sequence[tuple[str, int]] | None = None,
        service_name: str | None = None,
        sentinel_options: Mapping[str, Any] | None = None,
        on_backend_down: Callable[[Exception], object] | None = None,
        on_backend_up: Callable[[], object] | None = None,
        listen: bool = True,
        redis_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not prefix or any(c.isspace() for c in prefix):
            raise ValueError("prefix must be a non-empty string without spaces")
        if health_check_interval <= 0 or presence_ttl <= 0:
            raise ValueError("health_check_interval and presence_ttl must be positive")
        first, cap = reconnect_backoff
        if first <= 0 or cap < first:
            raise ValueError("reconnect_backoff is (first delay > 0, cap >= first delay)")
        if socket_timeout <= 0 or connect_timeout <= 0 or max_connections < 1:
            raise ValueError("timeouts and max_connections must be positive")
        self.url = url
        self.prefix = prefix
        self.health_check_interval = health_check_interval
        self.presence_ttl = presence_ttl
        self.reconnect_backoff = (first, cap)
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.on_backend_down = on_backend_down
        self.on_backend_up = on_backend_up
        self.listen = listen
        self.redis_options = dict(redis_options or {})
        self.sentinel_options = dict(sentinel_options or {})
        self.sentinels: list[tuple[str, int]] | None = None
        self.service_name = service_name
        if urlsplit(url).scheme == "redis+sentinel":
            parsed = parse_sentinel_url(url)
            self.sentinels = parsed.pop("sentinels")
            self.service_name = service_name or parsed.pop("service_name")
            parsed.pop("service_name", None)
            for key, value in parsed.items():
                self.redis_options.setdefault(key, value)
        if sentinels is not None:
            self.sentinels = [(str(h), int(p)) for h, p in sentinels]
        if self.sentinels is not None and not self.service_name:
            raise ValueError("Redis Sentinel needs service_name (the monitored master's name)")

        #: This process's identity in Redis (presence entries, client names).
        self.process_id = uuid.uuid4().hex
        self._key_prefix = prefix + ":"
        self._control_key = (self._key_prefix + CONTROL).encode()
        self._presence_channel = (self._key_prefix + PRESENCE).encode()
        self._processes_key = f"{prefix}:processes"

        self._redis: Redis | None = None
        self._sub: Redis | None = None
        self._sentinel: Sentinel | None = None
        self._started = False
        self._closing = False
        self._down = True
        self._ever_up = False
        self._down_since = 0.0

        # channels (core names plus CONTROL / PRESENCE) this process wants, and those the
        # current pub/sub connection has subscribed
        self._wanted: set[str] = set()
        self._active: set[str] = set()
        self._dirty: set[str] = set()
        self._pubsub: PubSub | None = None
        self._sub_lock: asyncio.Lock | None = None
        self._barriers: dict[bytes, asyncio.Future[None]] = {}
        self._barrier_seq = 0
        self._last_rx = 0.0

        # presence writes: latest local count per (group, user) and events, not yet written
        self._pending: dict[tuple[str, str], int] = {}
        self._events: list[PresenceEvent] = []
        self._marked = 0
        self._flushed = 0
        self._presence_groups: set[str] = set()
        self._presence_lock: asyncio.Lock | None = None

        self._supervisor: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._unsubscriber: asyncio.Task[None] | None = None
        self._presence_writer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

        self._published = 0
        self._received = 0
        self._control_received = 0
        self._presence_events = 0
        self._reconnects = 0
        self._errors = 0
        self._skipped = 0

    # -- naming ------------------------------------------------------------------------------

    def channel_key(self, channel: str) -> str:
        """The Redis channel of a core channel (``g:boys`` → ``asgi_groups:g:boys``)."""
        return self._key_prefix + channel

    def presence_key(self, group: str, process_id: str | None = None) -> str:
        """The hash ``{user_id: connections}`` one process keeps for ``group``."""
        return f"{self.prefix}:presence:{group}:{process_id or self.process_id}"

    def process_key(self, process_id: str | None = None) -> str:
        """The key that says a process is alive (it expires with the process)."""
        return f"{self.prefix}:process:{process_id or self.process_id}"

    @property
    def down(self) -> bool:
        """True while the backend cannot reach Redis (and before it started)."""
        return self._down

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.presence_ttl * 1000))

    # -- clients -----------------------------------------------------------------------------

    def _make_client(self, *, pubsub: bool) -> Redis:
        options: dict[str, Any] = dict(self.redis_options)
        options.setdefault("client_name", _client_name(self.prefix, self.process_id))
        options["socket_timeout"] = self.socket_timeout
        options["socket_connect_timeout"] = self.connect_timeout
        if pubsub:
            # the listener's connection never retries on its own: its supervisor reconnects
            # and re-subscribes; liveness is checked with our own PINGs
            options["retry"] = Retry(NoBackoff(), 0)
        else:
            # one immediate retry on a broken pooled connection (e.g. after a Redis restart),
            # none on timeouts (the command may have run)
            options["retry"] = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
            options["health_check_interval"] = self.health_check_interval
        if self.sentinels is not None:
            if self._sentinel is None:
                sentinel_options = dict(self.sentinel_options)
                sentinel_options.setdefault("socket_timeout", self.socket_timeout)
                sentinel_options.setdefault("socket_connect_timeout", self.connect_timeout)
                self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                    self.sentinels, sentinel_kwargs=sentinel_options
                )
            assert self.service_name is not None
            master: Redis = self._sentinel.master_for(self.service_name, **options)
            return master
        if pubsub:
            return Redis.from_url(self.url, **options)
        pool = BlockingConnectionPool.from_url(
            self.url, max_connections=self.max_connections, timeout=self.socket_timeout, **options
        )
        return Redis.from_pool(pool)

    @property
    def _attempt_timeout(self) -> float:
        return self.connect_timeout + 2 * self.socket_timeout

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, subscribe and start the listener; ``BackendUnavailable`` if unreachable."""
        if self._started:
            return
        self._closing = False
        self._ever_up = False
        self._sub_lock = asyncio.Lock()
        self._presence_lock = asyncio.Lock()
        self._redis = self._make_client(pubsub=False)
        try:
            async with asyncio.timeout(self._attempt_timeout):
                await self._redis.ping()
        except (*_NETWORK_ERRORS, TimeoutError) as exc:
            await self._close_clients()
            raise BackendUnavailable(
                f"cannot reach Redis at {safe_url(self.url)}: {exc or type(exc).__name__}"
            ) from exc
        self._started = True
        if not self.listen:
            self._down = False
            return
        self._wanted.update((CONTROL, BROADCAST))  # the registry always wants broadcasts
        if self._watching_presence:
            self._wanted.add(PRESENCE)
        self._sub = self._make_client(pubsub=True)
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._start_supervisor(first)
        try:
            await first
        except BaseException as exc:
            await self.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise BackendUnavailable(
                f"cannot subscribe at Redis {safe_url(self.url)}: {exc or type(exc).__name__}"
            ) from exc
        self._heartbeat = asyncio.get_running_loop().create_task(
            self._heartbeat_loop(), name="asgi_groups.redis.heartbeat"
        )

    async def close(self) -> None:
        """Stop the listener, delete this process's presence entries, close every connection."""
        if not self._started and self._redis is None:
            return
        if not self._down and self.listen:
            with contextlib.suppress(*_NETWORK_ERRORS, TimeoutError):
                async with asyncio.timeout(self.socket_timeout):
                    await self.flush_presence()  # leave events of the sockets just closed
        self._closing = True
        tasks = [
            task
            for task in (
                self._heartbeat,
                self._unsubscriber,
                self._presence_writer,
                self._supervisor,
                *self._background,
            )
            if task is not None and not task.done()
        ]
        await _cancel_all(tasks)
        self._heartbeat = self._unsubscriber = self._presence_writer = self._supervisor = None
        self._background.clear()
        if self._started and self.listen and self._redis is not None and not self._down:
            with contextlib.suppress(*_NETWORK_ERRORS, TimeoutError):
                async with asyncio.timeout(self.socket_timeout):
                    await self._delete_presence()
        await self._close_clients()
        self._started = False
        self._down = True
        self._wanted.clear()
        self._active.clear()
        self._pending.clear()
        self._events.clear()
        self._flushed = self._marked

    async def _close_clients(self) -> None:
        for client in (self._sub, self._redis):
            if client is not None:
                with contextlib.suppress(*_NETWORK_ERRORS):
                    await client.aclose()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                with contextlib.suppress(*_NETWORK_ERRORS):
                    await sentinel.aclose()
        self._sub = self._redis = None
        self._sentinel = None

    # -- sending -----------------------------------------------------------------------------

    async def publish(self, channel: str, frame: Frame, exclude: str | None) -> None:
        await self._publish(self._key_prefix + channel, pack_frame(frame, exclude))
        self._published += 1

    async def control(self, op: str, args: dict[str, Any]) -> None:
        await self._publish(self._control_key.decode(), _pack_json({"op": op, "args": args}))

    async def _publish(self, key: str, data: bytes) -> None:
        redis = self._redis
        if redis is None or (self._down and self.listen):
            raise BackendUnavailable(
                f"Redis at {safe_url(self.url)} is unreachable; the message was not sent"
            )
        try:
            await redis.publish(key, data)
        except _NETWORK_ERRORS as exc:
            self._errors += 1
            raise BackendUnavailable(
                f"could not publish to Redis at {safe_url(self.url)}: {exc}"
            ) from exc

    # -- subscriptions -----------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Subscribe now and wait until Redis confirms (so a send after ``join`` arrives).

        While Redis is down this only records the channel: the reconnection subscribes it.
        """
        self._wanted.add(channel)
        if not self.listen or channel in self._active or self._sub_lock is None:
            return
        async with self._sub_lock:
            pubsub = self._pubsub
            if channel in self._active or channel not in self._wanted or pubsub is None:
                return
            token, barrier = self._barrier()
            try:
                async with asyncio.timeout(self.socket_timeout):
                    await pubsub.subscribe(self._key_prefix + channel)
                    await pubsub.ping(token)
            except (*_NETWORK_ERRORS, TimeoutError) as exc:
                # the listener notices the broken connection and re-subscribes everything
                self._barriers.pop(token, None)
                logger.debug("SUBSCRIBE %s failed: %r", channel, exc)
                return
            self._active.add(channel)
        try:
            async with asyncio.timeout(self.socket_timeout):
                await barrier
        except TimeoutError:
            self._barriers.pop(token, None)
            logger.warning("Redis did not confirm SUBSCRIBE %s in time", channel)

    def unsubscribe(self, channel: str) -> None:
        """Forget ``channel``; the UNSUBSCRIBE is queued (a quick re-join cancels it)."""
        self._wanted.discard(channel)
        if not self.listen or self._sub_lock is None:
            return
        self._dirty.add(channel)
        if self._unsubscriber is None or self._unsubscriber.done():
            self._unsubscriber = asyncio.get_running_loop().create_task(
                self._unsubscribe_dirty(), name="asgi_groups.redis.unsubscribe"
            )

    async def _unsubscribe_dirty(self) -> None:
        assert self._sub_lock is not None
        while self._dirty:
            async with self._sub_lock:
                dirty, self._dirty = self._dirty, set()
                drop = [c for c in dirty if c not in self._wanted and c in self._active]
                pubsub = self._pubsub
                if not drop or pubsub is None:
                    continue
                self._active.difference_update(drop)
                try:
                    async with asyncio.timeout(self.socket_timeout):
                        await pubsub.unsubscribe(*(self._key_prefix + c for c in drop))
                except (*_NETWORK_ERRORS, TimeoutError) as exc:
                    logger.debug("UNSUBSCRIBE failed: %r", exc)

    def watch_presence(self) -> None:
        super().watch_presence()
        if PRESENCE not in self._wanted and self._started and self.listen:
            task = asyncio.get_running_loop().create_task(self.subscribe(PRESENCE))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _barrier(self) -> tuple[bytes, asyncio.Future[None]]:
        """A PING token whose PONG proves Redis has processed every command sent before it."""
        self._barrier_seq += 1
        token = b"b%d" % self._barrier_seq
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers[token] = future
        return token, future

    # -- the listener ------------------------------------------------------------------------

    def _start_supervisor(self, first: asyncio.Future[None] | None) -> None:
        task = asyncio.get_running_loop().create_task(
            self._supervise(first), name="asgi_groups.redis.supervisor"
        )
        task.add_done_callback(self._supervisor_done)
        self._supervisor = task

    def _supervisor_done(self, task: asyncio.Task[None]) -> None:
        if self._closing or not self._started or task is not self._supervisor:
            return
        # never expected: _supervise only ends when closing. Say so and start it again.
        exc = None if task.cancelled() else task.exception()
        logger.critical("Redis listener supervisor stopped unexpectedly (%r); restarting", exc)
        self._errors += 1
        self._mark_down(RedisConnectionError(f"the listener supervisor stopped: {exc!r}"))
        self._start_supervisor(None)

    async def _supervise(self, first: asyncio.Future[None] | None) -> None:
        """Run listener sessions forever, reconnecting with backoff after each failure."""
        attempt = 0
        while not self._closing:
            try:
                await self._session(first)
            except Exception as exc:
                error: Exception = exc
            else:  # pragma: no cover - a session only ends by raising
                error = RuntimeError("the listener stopped")
            if first is not None and not first.done():
                self._supervisor = None
                first.set_exception(error)
                return
            first = None
            if self._closing:
                return
            self._errors += 1
            if self._down:
                logger.warning("Redis reconnect attempt %d failed: %s", attempt + 1, error)
            else:
                attempt = 0
                self._mark_down(error)
            initial, cap = self.reconnect_backoff
            await asyncio.sleep(random.uniform(0, min(cap, initial * 2**attempt)))
            attempt = min(attempt + 1, 32)

    async def _session(self, first: asyncio.Future[None] | None) -> None:
        """One pub/sub connection: connect, subscribe everything, then read until it fails."""
        assert self._sub is not None and self._sub_lock is not None
        assert self._presence_lock is not None
        loop = asyncio.get_running_loop()
        pubsub = self._sub.pubsub()
        reader: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(self._attempt_timeout):
                await pubsub.connect()  # type: ignore[no-untyped-call]
                self._last_rx = loop.time()
                reader = loop.create_task(self._read(pubsub), name="asgi_groups.redis.listener")
                self._reader = reader
                token, barrier = self._barrier()
                async with self._sub_lock:
                    channels = sorted(self._wanted)
                    keys = [self._key_prefix + c for c in channels]
                    for i in range(0, len(keys), SUBSCRIBE_BATCH):
                        await pubsub.subscribe(*keys[i : i + SUBSCRIBE_BATCH])
                    await pubsub.ping(token)
                    self._pubsub = pubsub
                    self._active = set(channels)
                await asyncio.wait({barrier, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not barrier.done():
                    self._raise_reader_end(reader)
                async with self._presence_lock:  # register this process; after an outage
                    await self._write_presence(full=True)  # Redis may have lost it all
            self._mark_up()
            if first is not None and not first.done():
                first.set_result(None)
            await self._watch(pubsub, reader)
        finally:
            if self._pubsub is pubsub:
                self._pubsub = None
                self._active = set()
            for future in self._barriers.values():
                if not future.done():
                    future.set_result(None)
            self._barriers.clear()
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
            with contextlib.suppress(*_NETWORK_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _watch(self, pubsub: PubSub, reader: asyncio.Task[None]) -> None:
        """PING when idle; fail when Redis has been silent for ``health_check_interval``."""
        loop = asyncio.get_running_loop()
        interval = self.health_check_interval
        tick = interval / 4
        while not self._closing:
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
                    async with asyncio.timeout(self.socket_timeout):
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
            channel: bytes = message["channel"]
            data: bytes = message["data"]
            try:
                if channel == self._control_key:
                    self._on_control(data)
                elif channel == self._presence_channel:
                    self._on_presence_event(data)
                else:
                    frame, exclude = unpack_frame(data)
                    self._received += 1
                    self.sink.deliver(channel[len(self._key_prefix) :].decode(), frame, exclude)
            except EnvelopeError as exc:
                self._skipped += 1
                logger.warning("skipping a message on %r: %s", channel, exc)
            except Exception:
                self._errors += 1
                logger.exception("error handling a message on %r", channel)
        elif kind == "pong":
            barrier = self._barriers.pop(message["data"], None)
            if barrier is not None and not barrier.done():
                barrier.set_result(None)

    def _on_control(self, data: bytes) -> None:
        body = _unpack_json(data)
        if not isinstance(body, dict) or not isinstance(body.get("args"), dict):
            raise EnvelopeError("malformed control message")
        self._control_received += 1
        self.sink.control(str(body.get("op")), body["args"])

    def _on_presence_event(self, data: bytes) -> None:
        body = _unpack_json(data)
        if (
            not isinstance(body, dict)
            or body.get("event") not in ("join", "leave")
            or not isinstance(body.get("group"), str)
            or not isinstance(body.get("user_id"), str)
        ):
            raise EnvelopeError("malformed presence event")
        self._presence_events += 1
        event: PresenceEvent = {
            "type": "presence",
            "group": body["group"],
            "user_id": body["user_id"],
            "event": body["event"],
        }
        self.sink.presence_event(event)

    # -- up / down ---------------------------------------------------------------------------

    def _mark_down(self, error: Exception) -> None:
        if self._down:
            return
        self._down = True
        self._down_since = time.monotonic()
        logger.error(
            "Redis backend DOWN (%s: %s): sends raise BackendUnavailable, local sockets keep "
            "working; reconnecting",
            type(error).__name__,
            error,
        )
        self._fire(self.on_backend_down, error)

    def _mark_up(self) -> None:
        if not self._down:
            return
        self._down = False
        if self._ever_up:
            self._reconnects += 1
            logger.warning(
                "Redis backend UP again after %.1fs; %d channels re-subscribed",
                time.monotonic() - self._down_since,
                len(self._active),
            )
            self._fire(self.on_backend_up)
        self._ever_up = True

    def _fire(self, hook: HookFn | None, *args: object) -> None:
        if hook is None:
            return
        try:
            result = hook(*args)
        except Exception:
            logger.exception("Redis backend hook %r failed", hook)
            return
        if inspect.isawaitable(result):
            task = asyncio.get_running_loop().create_task(self._await_hook(hook, result))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    @staticmethod
    async def _await_hook(hook: HookFn, result: Awaitable[object]) -> None:
        try:
            await result
        except Exception:
            logger.exception("Redis backend hook %r failed", hook)

    # -- presence ----------------------------------------------------------------------------

    def presence_changed(
        self, group: str, user_id: str, count: int, event: Literal["join", "leave"] | None
    ) -> None:
        if not self._started or not self.listen:
            return
        self._pending[(group, user_id)] = count
        if event is not None:
            self._events.append(
                {"type": "presence", "group": group, "user_id": user_id, "event": event}
            )
        self._marked += 1
        if self._presence_writer is None or self._presence_writer.done():
            self._presence_writer = asyncio.get_running_loop().create_task(
                self._write_behind(), name="asgi_groups.redis.presence"
            )

    async def _write_behind(self) -> None:
        while self._flushed < self._marked and self._started:
            await self.flush_presence()

    async def flush_presence(self) -> None:
        """Write every presence change made so far (one MULTI); a no-op while Redis is down."""
        target = self._marked
        if self._flushed >= target or self._presence_lock is None:
            return
        async with self._presence_lock:
            if self._flushed < target:
                await self._write_presence(full=False)

    async def _write_presence(self, *, full: bool) -> None:
        """Write pending changes, or rewrite all of this process's entries (``full``)."""
        generation = self._marked
        pending, self._pending = self._pending, {}
        events, self._events = self._events, []
        redis = self._redis
        try:
            if redis is None or (self._down and not full):
                return
            ttl = self.ttl_ms
            async with redis.pipeline(transaction=True) as pipe:
                if full:
                    snapshot = self.sink.presence_snapshot()
                    for group in self._presence_groups.difference(snapshot):
                        pipe.delete(self.presence_key(group))
                    for group, counts in snapshot.items():
                        key = self.presence_key(group)
                        pipe.delete(key)
                        pipe.hset(key, mapping=counts)  # type: ignore[arg-type]
                        pipe.pexpire(key, ttl)
                    self._presence_groups = set(snapshot)
                    info = {"pid": os.getpid(), "host": socket.gethostname(), "at": time.time()}
                    pipe.set(self.process_key(), json.dumps(info), px=ttl)
                    pipe.sadd(self._processes_key, self.process_id)
                else:
                    touched: set[str] = set()
                    for (group, user_id), count in pending.items():
                        key = self.presence_key(group)
                        if count > 0:
                            pipe.hset(key, user_id, count)
                            touched.add(key)
                            self._presence_groups.add(group)
                        else:
                            pipe.hdel(key, user_id)
                    for key in touched:
                        pipe.pexpire(key, ttl)
                for event in events:
                    pipe.publish(self._presence_channel, _pack_json(event))
                await pipe.execute()
        except _NETWORK_ERRORS as exc:
            self._errors += 1
            logger.warning("could not write presence to Redis: %s", exc)
            if full:
                raise
        finally:
            self._flushed = max(self._flushed, generation)

    async def _heartbeat_loop(self) -> None:
        """Every ``presence_ttl / 3``: rewrite this process's presence and prune dead processes."""
        assert self._presence_lock is not None
        while True:
            await asyncio.sleep(self.presence_ttl / 3)
            if self._down:
                continue
            try:
                async with asyncio.timeout(self._attempt_timeout):
                    async with self._presence_lock:
                        await self._write_presence(full=True)
                    await self._prune_processes()
            except (*_NETWORK_ERRORS, TimeoutError) as exc:
                logger.warning("presence heartbeat failed: %s", exc)
            except Exception:  # never let the heartbeat die: presence would silently expire
                self._errors += 1
                logger.exception("presence heartbeat failed")

    async def _prune_processes(self) -> None:
        assert self._redis is not None
        members = await self._redis.smembers(self._processes_key)
        others = [p for p in map(_text, members) if p != self.process_id]
        if not others:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for process_id in others:
                pipe.exists(self.process_key(process_id))
            alive = await pipe.execute()
        dead = [p for p, exists in zip(others, alive, strict=True) if not exists]
        if dead:
            await self._redis.srem(self._processes_key, *dead)

    async def _delete_presence(self) -> None:
        assert self._redis is not None
        async with self._redis.pipeline(transaction=True) as pipe:
            for group in self._presence_groups:
                pipe.delete(self.presence_key(group))
            pipe.delete(self.process_key())
            pipe.srem(self._processes_key, self.process_id)
            await pipe.execute()
        self._presence_groups.clear()

    async def presence(self, group: str) -> dict[str, int]:
        """Local counts plus every other live process's entry for ``group``."""
        totals = dict(self.sink.presence(group)) if self.listen else {}
        redis = self._redis
        if redis is None or (self._down and self.listen):
            raise BackendUnavailable(
                f"Redis at {safe_url(self.url)} is unreachable; presence spans processes"
            )
        try:
            members = await redis.smembers(self._processes_key)
            others = [_text(m) for m in members]
            if self.listen:
                others = [p for p in others if p != self.process_id]
            async with redis.pipeline(transaction=False) as pipe:
                for process_id in others:
                    pipe.hgetall(self.presence_key(group, process_id))
                results: list[dict[bytes, bytes]] = await pipe.execute()
        except _NETWORK_ERRORS as exc:
            self._errors += 1
            raise BackendUnavailable(f"could not read presence from Redis: {exc}") from exc
        for entries in results:
            for user_id, count in entries.items():
                key = user_id.decode()
                totals[key] = totals.get(key, 0) + int(count)
        return totals

    # -- stats -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "process_id": self.process_id,
            "down": self._down,
            "published": self._published,
            "received": self._received,
            "control_received": self._control_received,
            "presence_events": self._presence_events,
            "reconnects": self._reconnects,
            "errors": self._errors,
            "skipped": self._skipped,
            "subscriptions": len(self._active),  # including broadcast and control
        }

    def channels(self) -> frozenset[str]:
        """The channels this process is subscribed to right now (core names)."""
        return frozenset(self._active)

    def __repr__(self) -> str:
        state = "down" if self._down else "up"
        return f"<RedisBackend {safe_url(self.url)} prefix={self.prefix!r} {state}>"
