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

With :meth:`~RedisBackend.keep_history`, a publish with ``history=True`` is kept in a capped
Redis stream per channel and published with its position by one Lua script, so that a client
reconnecting through any process recovers what it missed (:mod:`.redis_history`).

This module composes the parts, one job each: :mod:`.redis_wire` (envelopes, channel and key
names), :mod:`.redis_client` (settings, URLs, the two clients), :mod:`.redis_subscriptions`
(which channels are subscribed, barrier PINGs), :mod:`.redis_listener` (the supervised listener
and the up/down state), :mod:`.redis_presence` (presence write-behind, heartbeats, pruning) and
:mod:`.redis_history` (positions, kept messages, recovery).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal, Unpack

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from ..errors import BackendUnavailable, DeliveryUnknown, MessageTooLarge
from ..frames import Frame
from ..history import Entry, HistoryLimits, Position, Recovery
from .base import BROADCAST, Backend, HistoryUnavailable
from .redis_client import (
    NETWORK_ERRORS,
    ClientOptions,
    Clients,
    PublishLine,
    RedisOptions,
    Timing,
    Unanswered,
    parse_sentinel_url,
    safe_url,
    settings,
)
from .redis_history import RedisHistory
from .redis_listener import Listener, State, cancel_all
from .redis_presence import Presence
from .redis_subscriptions import Subscriptions
from .redis_wire import (
    CONTROL,
    DEFAULT_PREFIX,
    ENVELOPE_VERSION,
    PRESENCE,
    EnvelopeError,
    Names,
    pack_control,
    pack_frame,
    unpack_control,
    unpack_frame,
)

logger = logging.getLogger("asgi_groups.redis")

#: Keep a user's revocation unless a later one is kept already (two processes that revoked
#: during an outage send theirs when it ends, in any order), and publish it.
_REVOKE = """
local kept = tonumber(redis.call('GET', KEYS[2]) or '-1')
if kept <= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
end
return redis.call('PUBLISH', KEYS[3], ARGV[2])
"""

#: A publish larger than this re-reads Redis' pub/sub buffer limit first, at most every
#: ``RECHECK_EVERY`` seconds (an operator may have lowered it since it was read).
RECHECK_ABOVE = 16 * 1024
RECHECK_EVERY = 1.0

__all__ = [
    "DEFAULT_PREFIX",
    "ENVELOPE_VERSION",
    "ClientOptions",
    "EnvelopeError",
    "RedisBackend",
    "RedisOptions",
    "Timing",
    "pack_frame",
    "parse_sentinel_url",
    "safe_url",
    "unpack_frame",
]


#: Where, under the prefix, each process's stats hash lives (``<prefix>:stats:<process id>``).
STATS_KEY = "stats:"


class RedisBackend(Backend):
    """Fan-out through Redis pub/sub; see the module docstring for the guarantees.

    ``prefix`` namespaces every channel and key. ``listen=False`` makes a publish-only backend
    (scripts, the CLI). ``on_backend_down(error)`` / ``on_backend_up()`` (sync or async) are
    called once per outage. ``timing`` (:class:`Timing`) holds every time limit;
    ``client_options`` (:class:`ClientOptions`) the pool size, Sentinels and redis-py options.
    Each of their fields is also accepted as a keyword of its own (``presence_ttl=10.0``,
    ``redis_options={...}``, …), which is how ``Registry(url, ...)`` passes them; a keyword
    wins over the same field of ``timing`` / ``client_options``. Channel and key names are
    in ``names`` (:class:`~.redis_wire.Names`).
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        listen: bool = True,
        on_backend_down: Callable[[Exception], object] | None = None,
        on_backend_up: Callable[[], object] | None = None,
        timing: Timing | None = None,
        client_options: ClientOptions | None = None,
        **options: Unpack[RedisOptions],
    ) -> None:
        #: This process's identity in Redis (presence entries, client names).
        self.process_id = uuid.uuid4().hex
        self.names = Names(prefix, self.process_id)
        self.timing, self.client_options = settings(timing, client_options, options)
        self.url = url
        self.prefix = prefix
        self.listen = listen

        self._started = False
        self._clients = Clients(url, self.client_options, self.timing, self.names.client_name())
        #: The Redis Sentinels and the master's name, from the URL or the options (or None).
        self.sentinels, self.service_name = self._clients.sentinels, self._clients.service_name
        self._state = State(on_backend_down, on_backend_up, self._resumed, self._interrupted)
        self._subscriptions = Subscriptions(self.names.key_prefix, self.timing.socket_timeout)
        self._presence = Presence(self.names, self.timing, lambda: self._state.down)
        self._listener = Listener(
            self.names, self.timing, self._subscriptions, self._state, self._reconnected
        )
        self._history: RedisHistory | None = None
        #: The revocation script, registered with the command client when it is opened.
        self._revoke: AsyncScript | None = None
        self._published = 0
        self._errors = 0
        self._unknown = 0
        #: Largest publish Redis' pub/sub buffers carry safely (read from Redis; None: any).
        self.max_publish: int | None = None
        self._limit_read = 0.0

    @property
    def down(self) -> bool:
        """True while the backend cannot reach Redis (and before it started)."""
        return self._state.down

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, subscribe and start the listener; ``BackendUnavailable`` if unreachable."""
        if self._started:
            return
        self._state.ever_up = False
        redis = self._clients.open_commands()
        self._revoke = redis.register_script(_REVOKE)
        try:
            async with asyncio.timeout(self.timing.attempt_timeout):
                await redis.ping()
        except (*NETWORK_ERRORS, TimeoutError) as exc:
            await self._clients.aclose()
            raise BackendUnavailable(
                f"cannot reach Redis at {safe_url(self.url)}: {exc or type(exc).__name__}"
            ) from exc
        self._started = True
        await self._read_buffer_limit(redis)
        if not self.listen:
            self._state.down = False
            return
        self._subscriptions.open()
        self._presence.open(redis, self.sink)
        self._presence.active = True
        # the registry always wants broadcasts
        self._subscriptions.wanted.update((CONTROL, BROADCAST))
        if self._watching_presence:
            self._subscriptions.wanted.add(PRESENCE)
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._listener.start(self._clients.open_pubsub(), self.sink, first)
        try:
            await first
        except BaseException as exc:
            await self.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise BackendUnavailable(
                f"cannot subscribe at Redis {safe_url(self.url)}: {exc or type(exc).__name__}"
            ) from exc
        self._presence.start_heartbeat()

    def _interrupted(self, cause: str) -> None:
        if self.listen:
            self.sink.interrupted(cause)

    def _resumed(self, cause: str, down_at: float) -> None:
        if self.listen:
            self.sink.resumed(cause, down_at)

    async def _reconnected(self) -> None:
        """A listener session is subscribed: drop pooled connections from before, rewrite presence.

        After a restart or a failover every idle pooled connection is dead; a publish on one
        would fail after its write, with an unknown outcome, instead of simply succeeding.
        """
        commands, line = self._clients.commands, self._clients.line
        if self._state.ever_up and commands is not None:
            await commands.connection_pool.disconnect(inuse_connections=False)
        if self._state.ever_up and line is not None:
            await line.reset()
        if commands is not None:
            await self._read_buffer_limit(commands)
        await self._presence.rewrite()

    async def _read_buffer_limit(self, redis: Redis) -> None:
        """Read Redis' pub/sub output-buffer limit: a larger publish would cut every subscriber.

        A publish over half the hard limit is refused at the sender (``MessageTooLarge``);
        where ``CONFIG`` is not allowed, Redis' default (32 MiB) is assumed.
        """
        try:
            reply = await redis.config_get("client-output-buffer-limit")
        except NETWORK_ERRORS:
            return
        text = next(iter(reply.values()), b"")
        words = (text.decode() if isinstance(text, bytes) else str(text)).split()
        try:
            at = words.index("pubsub")
            hard, soft, seconds = (int(w) for w in words[at + 1 : at + 4])
        except ValueError:
            return
        self.max_publish = hard // 2 if hard else None
        self._limit_read = time.monotonic()
        if self._state.down and self._state.closed_by_redis:
            logger.warning(
                "Redis had closed this process's pub/sub connection; if not by a restart or a "
                "CLIENT KILL, its output-buffer limit did: client-output-buffer-limit pubsub "
                "%d %d %d cuts a subscriber whose unread messages pass %d bytes (or %d for %d s)"
                "; raise it with CONFIG SET client-output-buffer-limit 'pubsub <hard> <soft> <s>'",
                hard,
                soft,
                seconds,
                hard,
                soft,
                seconds,
            )

    async def close(self) -> None:
        """Stop the listener, delete this process's presence entries, close every connection."""
        if not self._started and self._clients.commands is None:
            return
        if not self.down and self.listen:
            with contextlib.suppress(*NETWORK_ERRORS, TimeoutError):
                async with asyncio.timeout(self.timing.socket_timeout):
                    await self._presence.flush()  # leave events of the sockets just closed
        self._presence.active = False  # later changes would start a writer nobody cancels
        self._listener.closing = True
        unsubscriber = self._subscriptions.unsubscriber
        tasks = [
            task
            for task in (
                *self._presence.tasks(),
                unsubscriber,
                *self._listener.tasks(),
                *self._state.background,
            )
            if task is not None and not task.done()
        ]
        await cancel_all(tasks)
        self._listener.supervisor = self._subscriptions.unsubscriber = None
        self._state.background.clear()
        if self._started and self.listen and not self.down:
            with contextlib.suppress(*NETWORK_ERRORS, TimeoutError):
                async with asyncio.timeout(self.timing.socket_timeout):
                    await self._presence.delete()
        await self._clients.aclose()
        self._started = False
        self._state.down = True
        self._subscriptions.clear()
        self._presence.reset()

    # -- sending -----------------------------------------------------------------------------

    async def publish(
        self, channel: str, frame: Frame, exclude: str | None, history: bool = False
    ) -> Position | None:
        if frame.size > RECHECK_ABOVE and time.monotonic() - self._limit_read > RECHECK_EVERY:
            redis = self._clients.commands
            if redis is not None and not (self.down and self.listen):
                await self._read_buffer_limit(redis)  # it may have been lowered since
        limit = self.max_publish
        if limit is not None and frame.size > limit:
            raise MessageTooLarge(
                f"message of {frame.size} bytes is over {limit} bytes, half of Redis' "
                f"client-output-buffer-limit for pub/sub: every subscriber would be cut off; "
                f"send less, or raise that limit"
            )
        if history and self._history is not None:
            return await self._publish_kept(self._history, channel, frame, exclude)
        await self._publish(self.names.channel_key(channel), pack_frame(frame, exclude))
        self._published += 1
        return None

    async def _publish_kept(
        self, kept: RedisHistory, channel: str, frame: Frame, exclude: str | None
    ) -> Position:
        """Append to the channel's history and publish with the position: one script."""
        line = self._publish_line()
        try:
            position = await kept.publish(line, channel, frame, exclude)
        except NETWORK_ERRORS as exc:
            raise self._publish_failed(exc) from exc
        self._published += 1
        return position

    async def control(self, op: str, args: dict[str, Any]) -> None:
        data = pack_control(op, args)
        if op != "disconnect_user":
            await self._publish(self.names.control_key.decode(), data)
            return
        # kept as well as published: a process that misses the message applies it later
        redis = self._reachable("the revocation was not sent")
        ttl_ms = max(1, int(self.timing.revocation_ttl * 1000))
        kept = self.names.revoked_key(str(args["user_id"]))
        at = repr(float(args.get("at", time.time())))
        try:
            assert self._revoke is not None  # registered when the command client was opened
            await self._revoke(
                keys=[kept, kept + ":at", self.names.control_key],
                args=[at, data, ttl_ms],
                client=redis,
            )
        except NETWORK_ERRORS as exc:
            raise self._publish_failed(exc) from exc

    async def revocations(self, user_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The remembered ``disconnect_user`` of each of ``user_ids`` (one MGET per 500)."""
        redis = self._reachable("revocations cannot be read")
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(user_ids), 500):
            chunk = user_ids[start : start + 500]
            try:
                values = await redis.mget([self.names.revoked_key(u) for u in chunk])
            except NETWORK_ERRORS as exc:
                raise BackendUnavailable(f"could not read revocations: {exc}") from exc
            for user_id, value in zip(chunk, values, strict=True):
                if not isinstance(value, bytes):
                    continue
                try:
                    op, args = unpack_control(value)
                except EnvelopeError:
                    continue
                if op == "disconnect_user":
                    found[user_id] = args
        return found

    async def _publish(self, key: str, data: bytes) -> None:
        line = self._publish_line()
        try:
            await line.execute("PUBLISH", key, data)
        except NETWORK_ERRORS as exc:
            raise self._publish_failed(exc) from exc

    async def receivers(self, channel: str) -> int:
        """How many processes listen on ``channel`` now (``PUBSUB NUMSUB``): 0 means a
        publish there reaches nobody (e.g. a wrong prefix)."""
        redis = self._reachable("the receivers cannot be counted")
        try:
            counts = await redis.pubsub_numsub(self.names.channel_key(channel))
        except NETWORK_ERRORS as exc:
            raise BackendUnavailable(f"could not count receivers: {exc}") from exc
        return int(counts[0][1]) if counts else 0

    def _publish_failed(self, exc: Exception) -> BackendUnavailable:
        """The error a failed publish raises: not sent, or perhaps sent (no reply came)."""
        self._errors += 1
        where = safe_url(self.url)
        if isinstance(exc, Unanswered):
            self._unknown += 1
            return DeliveryUnknown(
                f"no reply from Redis at {where} after the message was written; it may have "
                f"been delivered ({exc})"
            )
        return BackendUnavailable(f"could not publish to Redis at {where}; not sent ({exc})")

    # -- history -----------------------------------------------------------------------------

    def keep_history(self, limits: HistoryLimits) -> None:
        """Keep history in Redis, shared by every process on this prefix (same ``limits``)."""
        self.history_limits = limits
        self._history = RedisHistory(self.names, limits)

    async def recover(self, channel: str, position: Position) -> Recovery:
        """What ``channel`` published after ``position``, from Redis (one atomic script)."""
        kept = self._kept()
        with self._reading_history() as redis:
            return await kept.recover(redis, channel, position)

    async def latest(self, channel: str, count: int) -> tuple[Position, list[Entry]]:
        """The channel's newest position and up to ``count`` newest kept messages."""
        kept = self._kept()
        with self._reading_history() as redis:
            return await kept.latest(redis, channel, count)

    @contextlib.contextmanager
    def _reading_history(self) -> Iterator[Redis]:
        """The commands client, with network errors turned into ``BackendUnavailable``."""
        redis = self._reachable("history cannot be read")
        try:
            yield redis
        except NETWORK_ERRORS as exc:
            self._errors += 1
            raise BackendUnavailable(
                f"could not read history from Redis at {safe_url(self.url)}: {exc}"
            ) from exc

    def _kept(self) -> RedisHistory:
        if self._history is None:
            raise HistoryUnavailable("history is off: Registry(history=HistoryLimits(...))")
        return self._history

    def _publish_line(self) -> PublishLine:
        """Where publishes go, or ``BackendUnavailable`` while Redis is known to be down."""
        self._reachable("the message was not sent")
        assert self._clients.line is not None  # opened with the command client
        return self._clients.line

    def _reachable(self, consequence: str) -> Redis:
        """The command client, or ``BackendUnavailable`` while Redis is known to be down."""
        redis = self._clients.commands
        if redis is None or (self.down and self.listen):
            raise BackendUnavailable(f"Redis at {safe_url(self.url)} is unreachable; {consequence}")
        return redis

    # -- subscriptions -----------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Subscribe now and wait until Redis confirms (so a send after ``join`` arrives).

        While Redis is down this only records the channel: the reconnection subscribes it.
        """
        await self._subscriptions.subscribe(channel)

    def unsubscribe(self, channel: str) -> None:
        """Forget ``channel``; the UNSUBSCRIBE is queued (a quick re-join cancels it)."""
        self._subscriptions.unsubscribe(channel)

    def watch_presence(self) -> None:
        super().watch_presence()
        if PRESENCE not in self._subscriptions.wanted and self._started and self.listen:
            self._state.spawn(self._subscriptions.subscribe(PRESENCE))

    def channels(self) -> frozenset[str]:
        """The channels this process is subscribed to right now (core names)."""
        return frozenset(self._subscriptions.active)

    # -- presence ----------------------------------------------------------------------------

    def presence_changed(
        self, group: str, user_id: str, count: int, event: Literal["join", "leave"] | None
    ) -> None:
        self._presence.changed(group, user_id, count, event)

    async def flush_presence(self) -> None:
        """Write every presence change made so far (one MULTI); a no-op while Redis is down."""
        await self._presence.flush()

    async def presence(self, group: str) -> dict[str, int]:
        """Local counts plus every other live process's entry for ``group``."""
        totals = dict(self.sink.presence(group)) if self.listen else {}
        redis = self._clients.commands
        if redis is None or (self.down and self.listen):
            raise BackendUnavailable(
                f"Redis at {safe_url(self.url)} is unreachable; presence spans processes"
            )
        others = await self._presence.read(redis, group, skip_self=self.listen)
        for user_id, count in others.items():
            totals[user_id] = totals.get(user_id, 0) + count
        return totals

    # -- stats -------------------------------------------------------------------------------

    def stats_key(self, process_id: str | None = None) -> str:
        """The Redis hash where a process's stats are published (``asgi-groups stats`` reads)."""
        return f"{self.names.key_prefix}{STATS_KEY}{process_id or self.process_id}"

    async def put_stats(self, fields: dict[str, str], ttl: float) -> None:
        """Publish this process's stats as a hash that expires after ``ttl`` seconds (so a
        process that died drops out); ``BackendUnavailable`` while Redis is unreachable."""
        redis = self._reachable("stats not published")
        key = self.stats_key()
        try:
            async with asyncio.timeout(self.timing.socket_timeout):
                async with redis.pipeline(transaction=True) as pipe:
                    pipe.delete(key)
                    pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
                    pipe.pexpire(key, max(1, int(ttl * 1000)))
                    await pipe.execute()
        except (*NETWORK_ERRORS, TimeoutError) as exc:
            raise BackendUnavailable(f"stats not published: {exc!r}") from exc

    def stats(self) -> dict[str, Any]:
        listener = self._listener
        stats: dict[str, Any] = {
            "name": self.name,
            "process_id": self.process_id,
            "down": self.down,
            "published": self._published,
            "received": listener.received,
            "control_received": listener.control_received,
            "presence_events": listener.presence_events,
            "reconnects": self._state.reconnects,
            "errors": self._errors + listener.errors + self._presence.errors,
            "unknown": self._unknown,  # publishes that failed after the write
            "skipped": listener.skipped,
            "subscriptions": len(self._subscriptions.active),  # including broadcast and control
        }
        if self._history is not None:
            stats["history"] = self._history.stats()
        return stats

    def __repr__(self) -> str:
        state = "down" if self.down else "up"
        return f"<RedisBackend {safe_url(self.url)} prefix={self.prefix!r} {state}>"
