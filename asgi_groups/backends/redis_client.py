"""Reaching Redis: the backend's settings, its URLs (plain and Sentinel) and its two clients.

One client sends commands through a bounded pool (publish, presence); the other carries the
listener's pub/sub connection, which never retries on its own: its supervisor reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypedDict
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection as Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

__all__ = [
    "NETWORK_ERRORS",
    "ClientOptions",
    "Clients",
    "NotWritten",
    "PublishLine",
    "RedisOptions",
    "Timing",
    "Unanswered",
    "execute_once",
    "parse_sentinel_url",
    "safe_url",
    "settings",
]

#: What a failed round trip to Redis raises.
NETWORK_ERRORS = (RedisError, OSError)


class NotWritten(RedisConnectionError):
    """The command failed before any of it was written: Redis certainly did not run it."""


class Unanswered(RedisConnectionError):
    """The command was (perhaps partly) written but no reply came: Redis may have run it."""


async def execute_once(client: Redis, *args: Any) -> Any:
    """Run one command exactly once on a pooled connection, saying whether a failure happened
    before the write.

    redis-py's own retry may send a command twice after a lost reply; a publish must not be
    repeated, and its sender must learn whether it may have gone out. A stale pooled
    connection is replaced while taking it from the pool, before anything is written.
    """
    pool = client.connection_pool
    try:
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]  # stale: replaced
    except (*NETWORK_ERRORS, TimeoutError) as exc:
        raise NotWritten(str(exc) or type(exc).__name__) from exc
    try:
        return await _execute_on(conn, args, None)
    finally:
        await pool.release(conn)


async def _execute_on(conn: Connection, args: tuple[Any, ...], bound: float | None) -> Any:
    """``args`` once on ``conn``: :class:`NotWritten` or :class:`Unanswered` on failure.

    ``bound`` limits the whole round trip when the connection has no timeout of its own.
    """
    written = False
    try:
        async with asyncio.timeout(bound):
            reader = getattr(conn, "_reader", None)  # redis-py skips this check in some modes
            if isinstance(reader, asyncio.StreamReader) and reader.at_eof():
                await conn.disconnect()  # Redis closed it while idle (a restart): not reusable
            if not conn.is_connected:
                await conn.connect()  # type: ignore[no-untyped-call]
            await conn.check_health()  # type: ignore[no-untyped-call]
            written = True
            await conn.send_command(*args, check_health=False)
            return await conn.read_response()
    except ResponseError:
        raise  # Redis refused the command: it did not run
    except (*NETWORK_ERRORS, TimeoutError) as exc:
        await conn.disconnect()  # a reply may still come: never reuse this connection
        error = Unanswered if written else NotWritten
        raise error(str(exc) or type(exc).__name__) from exc
    except BaseException:
        await conn.disconnect()
        raise


class PublishLine:
    """A connection of its own for single commands that must run once (publishes).

    A publish on it skips the pool's checkout and redis-py's task per timed write: about a
    third of a publish's cost in this process. One command at a time: a caller that finds it busy
    runs on the pool (:func:`execute_once`), so concurrent publishes never wait for each other.
    """

    def __init__(self, client: Redis, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self._conn: Connection | None = None
        self._busy = False

    async def execute(self, *args: Any) -> Any:
        """Run ``args`` exactly once (see :func:`execute_once`), here when free."""
        if self._busy:
            return await execute_once(self.client, *args)
        conn = self._conn
        if conn is None:
            pool = self.client.connection_pool
            # no socket timeout: bounded here instead, without redis-py's task per write
            options = {**pool.connection_kwargs, "socket_timeout": None}
            conn = self._conn = pool.connection_class(**options)
        self._busy = True
        try:
            return await _execute_on(conn, args, self.timeout)
        finally:
            self._busy = False
            if conn is not self._conn:  # reset meanwhile: this one is no longer kept
                with contextlib.suppress(*NETWORK_ERRORS):
                    await conn.disconnect()

    async def reset(self) -> None:
        """Drop the connection (after a reconnect: Redis may have restarted or failed over)."""
        conn, self._conn = self._conn, None
        if conn is not None and not self._busy:
            with contextlib.suppress(*NETWORK_ERRORS):
                await conn.disconnect()


@dataclass(frozen=True)
class Timing:
    """Every time limit of the Redis backend, in seconds."""

    #: Silence after which the listener's connection is declared dead (it PINGs every
    #: quarter of it when idle): how long a silent partition can go unnoticed.
    health_check_interval: float = 2.0
    #: Lifetime of this process's presence entries; their TTL is renewed every third of it.
    presence_ttl: float = 30.0
    #: (first delay, cap) of the listener's reconnection backoff, with full jitter; reset by
    #: every successful session, so that a healed link is used again within about a second.
    reconnect_backoff: tuple[float, float] = (0.05, 0.25)
    #: Bound on every command, so that a send during an outage fails fast.
    socket_timeout: float = 2.0
    #: Bound on every connection attempt.
    connect_timeout: float = 1.0
    #: How long a ``disconnect_user`` is remembered in Redis for processes that missed it.
    revocation_ttl: float = 86400.0

    def __post_init__(self) -> None:
        if self.health_check_interval <= 0 or self.presence_ttl <= 0:
            raise ValueError("health_check_interval and presence_ttl must be positive")
        first, cap = self.reconnect_backoff
        if first <= 0 or cap < first:
            raise ValueError("reconnect_backoff is (first delay > 0, cap >= first delay)")
        if self.socket_timeout <= 0 or self.connect_timeout <= 0 or self.revocation_ttl <= 0:
            raise ValueError("socket_timeout, connect_timeout and revocation_ttl must be positive")
        object.__setattr__(self, "reconnect_backoff", (first, cap))

    @property
    def attempt_timeout(self) -> float:
        """Bound on one whole attempt: connect, then a command or two."""
        return self.connect_timeout + 2 * self.socket_timeout

    @property
    def ttl_ms(self) -> int:
        """``presence_ttl`` as Redis' PEXPIRE takes it."""
        return max(1, int(self.presence_ttl * 1000))


@dataclass(frozen=True)
class ClientOptions:
    """How to open connections to Redis, beyond what the URL says."""

    #: Most connections in the command pool (the listener has one of its own, and publishes one
    #: more beside the pool: see PublishLine).
    max_connections: int = 50
    #: ``(host, port)`` of Redis Sentinels that find the master named ``service_name``.
    sentinels: Sequence[tuple[str, int]] | None = None
    #: The master's name as the Sentinels know it (a ``redis+sentinel://`` URL's path says it).
    service_name: str | None = None
    #: Options of the connections to the Sentinels themselves, as redis-py takes them.
    sentinel_options: Mapping[str, Any] | None = None
    #: Options of every Redis connection (TLS, credentials, …), as redis-py takes them.
    redis_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


class RedisOptions(TypedDict, total=False):
    """The settings ``RedisBackend`` also takes one by one, as keywords (``Registry(url, ...)``)."""

    health_check_interval: float
    presence_ttl: float
    reconnect_backoff: tuple[float, float]
    socket_timeout: float
    connect_timeout: float
    revocation_ttl: float
    max_connections: int
    sentinels: Sequence[tuple[str, int]] | None
    service_name: str | None
    sentinel_options: Mapping[str, Any] | None
    redis_options: Mapping[str, Any] | None


_TIMING_FIELDS = frozenset(f.name for f in fields(Timing))
_CLIENT_FIELDS = frozenset(f.name for f in fields(ClientOptions))


def settings(
    timing: Timing | None, client_options: ClientOptions | None, options: RedisOptions
) -> tuple[Timing, ClientOptions]:
    """``timing`` and ``client_options`` with the fields named one by one in ``options``."""
    given: dict[str, Any] = dict(options)
    unknown = sorted(set(given) - _TIMING_FIELDS - _CLIENT_FIELDS)
    if unknown:
        raise TypeError(f"RedisBackend got unexpected options: {', '.join(unknown)}")
    timing = replace(timing or Timing(), **{k: given[k] for k in _TIMING_FIELDS & set(given)})
    client_options = replace(
        client_options or ClientOptions(), **{k: given[k] for k in _CLIENT_FIELDS & set(given)}
    )
    return timing, client_options


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
        item = item.strip()
        if item.startswith("["):  # an IPv6 address: [::1] or [::1]:26379
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":")
        else:
            host, _, port = item.rpartition(":")
            if not host:
                host, port = port, ""
        sentinels.append((host, int(port or 26379)))
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


class Clients:
    """The command client and the pub/sub client of one backend, opened and closed together.

    A ``redis+sentinel://`` URL is read here: its Sentinels and service name, and its
    credentials and database as redis-py options (``options`` win over the URL).
    """

    def __init__(self, url: str, options: ClientOptions, timing: Timing, name: str) -> None:
        self.url = url
        self.timing = timing
        self.name = name
        self.max_connections = options.max_connections
        self.redis_options = dict(options.redis_options or {})
        self.sentinel_options = dict(options.sentinel_options or {})
        self.sentinels: list[tuple[str, int]] | None = None
        self.service_name = options.service_name
        if urlsplit(url).scheme == "redis+sentinel":
            parsed = parse_sentinel_url(url)
            self.sentinels = parsed.pop("sentinels")
            self.service_name = options.service_name or parsed.pop("service_name")
            parsed.pop("service_name", None)
            for key, value in parsed.items():
                self.redis_options.setdefault(key, value)
        if options.sentinels is not None:
            self.sentinels = [(str(h), int(p)) for h, p in options.sentinels]
        if self.sentinels is not None and not self.service_name:
            raise ValueError("Redis Sentinel needs service_name (the monitored master's name)")
        #: Commands through a bounded pool; the listener's pub/sub connection.
        self.commands: Redis | None = None
        self.pubsub: Redis | None = None
        #: Publishes, on a connection of their own beside the pool.
        self.line: PublishLine | None = None
        self._sentinel: Sentinel | None = None

    def open_commands(self) -> Redis:
        self.commands = self._make(pubsub=False)
        self.line = PublishLine(self.commands, self.timing.socket_timeout)
        return self.commands

    def open_pubsub(self) -> Redis:
        self.pubsub = self._make(pubsub=True)
        return self.pubsub

    def _make(self, *, pubsub: bool) -> Redis:
        timing = self.timing
        options: dict[str, Any] = dict(self.redis_options)
        options.setdefault("client_name", self.name)
        options["socket_timeout"] = timing.socket_timeout
        options["socket_connect_timeout"] = timing.connect_timeout
        if pubsub:
            # the listener's connection never retries on its own: its supervisor reconnects
            # and re-subscribes; liveness is checked with our own PINGs
            options["retry"] = Retry(NoBackoff(), 0)
        else:
            # one immediate retry on a broken pooled connection (e.g. after a Redis restart),
            # none on timeouts (the command may have run)
            options["retry"] = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
            options["health_check_interval"] = timing.health_check_interval
        if self.sentinels is not None:
            if self._sentinel is None:
                sentinel_options = dict(self.sentinel_options)
                sentinel_options.setdefault("socket_timeout", timing.socket_timeout)
                sentinel_options.setdefault("socket_connect_timeout", timing.connect_timeout)
                self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                    self.sentinels, sentinel_kwargs=sentinel_options
                )
            assert self.service_name is not None
            master: Redis = self._sentinel.master_for(self.service_name, **options)
            return master
        if pubsub:
            return Redis.from_url(self.url, **options)
        pool = BlockingConnectionPool.from_url(
            self.url, max_connections=self.max_connections, timeout=timing.socket_timeout, **options
        )
        return Redis.from_pool(pool)

    async def aclose(self) -> None:
        if self.line is not None:
            await self.line.reset()
        for client in (self.pubsub, self.commands):
            if client is not None:
                with contextlib.suppress(*NETWORK_ERRORS):
                    await client.aclose()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                with contextlib.suppress(*NETWORK_ERRORS):
                    await sentinel.aclose()
        self.pubsub = self.commands = self.line = None
        self._sentinel = None
