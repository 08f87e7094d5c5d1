"""Which channels a process wants, which its pub/sub connection has, and the barrier PINGs.

``wanted`` is what the registry asked for; ``active`` is what the current pub/sub connection has
subscribed. One lock orders every SUBSCRIBE / UNSUBSCRIBE on that connection, so that a queued
UNSUBSCRIBE can never overtake a re-join. A PING with a fresh token sent after a SUBSCRIBE is a
barrier: its PONG proves Redis has processed the SUBSCRIBE, so a send after ``join`` arrives.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio.client import PubSub

from .redis_client import NETWORK_ERRORS

__all__ = ["SUBSCRIBE_BATCH", "Subscriptions"]

logger = logging.getLogger("asgi_groups.redis")

#: Channels subscribed in one SUBSCRIBE command when (re)connecting.
SUBSCRIBE_BATCH = 1000


class Subscriptions:
    """Subscription bookkeeping for one backend; channels are core names (``g:boys``)."""

    def __init__(self, key_prefix: str, socket_timeout: float) -> None:
        self.key_prefix = key_prefix
        self.socket_timeout = socket_timeout
        self.wanted: set[str] = set()
        self.active: set[str] = set()
        #: Channels left since the last UNSUBSCRIBE went out (a quick re-join cancels one).
        self.dirty: set[str] = set()
        #: The listener's current connection, set once everything wanted is subscribed on it.
        self.pubsub: PubSub | None = None
        self.lock: asyncio.Lock | None = None
        self.unsubscriber: asyncio.Task[None] | None = None
        self._barriers: dict[bytes, asyncio.Future[None]] = {}
        self._barrier_seq = 0

    def open(self) -> None:
        """Ready for a listener (the lock belongs to the running loop)."""
        self.lock = asyncio.Lock()

    def clear(self) -> None:
        self.wanted.clear()
        self.active.clear()

    async def subscribe(self, channel: str) -> None:
        """Subscribe now and wait until Redis confirms.

        Without a listener connection (Redis down) this only records the channel: the
        reconnection subscribes it.
        """
        self.wanted.add(channel)
        if channel in self.active or self.lock is None:
            return
        async with self.lock:
            pubsub = self.pubsub
            if channel in self.active or channel not in self.wanted or pubsub is None:
                return
            token, barrier = self.barrier()
            try:
                async with asyncio.timeout(self.socket_timeout):
                    await pubsub.subscribe(self.key_prefix + channel)
                    await pubsub.ping(token)
            except (*NETWORK_ERRORS, TimeoutError) as exc:
                # the listener notices the broken connection and re-subscribes everything
                self._barriers.pop(token, None)
                logger.debug("SUBSCRIBE %s failed: %r", channel, exc)
                return
            self.active.add(channel)
        try:
            async with asyncio.timeout(self.socket_timeout):
                await barrier
        except TimeoutError:
            self._barriers.pop(token, None)
            logger.warning("Redis did not confirm SUBSCRIBE %s in time", channel)

    def unsubscribe(self, channel: str) -> None:
        """Forget ``channel``; the UNSUBSCRIBE is queued (a quick re-join cancels it)."""
        self.wanted.discard(channel)
        if self.lock is None:
            return
        self.dirty.add(channel)
        if self.unsubscriber is None or self.unsubscriber.done():
            self.unsubscriber = asyncio.get_running_loop().create_task(
                self._unsubscribe_dirty(), name="asgi_groups.redis.unsubscribe"
            )

    async def _unsubscribe_dirty(self) -> None:
        assert self.lock is not None
        while self.dirty:
            async with self.lock:
                dirty, self.dirty = self.dirty, set()
                drop = [c for c in dirty if c not in self.wanted and c in self.active]
                pubsub = self.pubsub
                if not drop or pubsub is None:
                    continue
                self.active.difference_update(drop)
                try:
                    async with asyncio.timeout(self.socket_timeout):
                        await pubsub.unsubscribe(*(self.key_prefix + c for c in drop))
                except (*NETWORK_ERRORS, TimeoutError) as exc:
                    logger.debug("UNSUBSCRIBE failed: %r", exc)

    def barrier(self) -> tuple[bytes, asyncio.Future[None]]:
        """A PING token whose PONG proves Redis has processed every command sent before it."""
        self._barrier_seq += 1
        token = b"b%d" % self._barrier_seq
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers[token] = future
        return token, future

    def pong(self, token: bytes) -> None:
        """The listener read the PONG of ``token``."""
        barrier = self._barriers.pop(token, None)
        if barrier is not None and not barrier.done():
            barrier.set_result(None)

    async def attach(self, pubsub: PubSub) -> asyncio.Future[None]:
        """Subscribe everything wanted on a new connection; the future is its barrier."""
        assert self.lock is not None
        token, barrier = self.barrier()
        async with self.lock:
            channels = sorted(self.wanted)
            keys = [self.key_prefix + c for c in channels]
            for i in range(0, len(keys), SUBSCRIBE_BATCH):
                await pubsub.subscribe(*keys[i : i + SUBSCRIBE_BATCH])
            await pubsub.ping(token)
            self.pubsub = pubsub
            self.active = set(channels)
        return barrier

    def detach(self, pubsub: PubSub) -> None:
        """``pubsub`` is gone: nothing is subscribed, and no barrier will get its PONG."""
        if self.pubsub is pubsub:
            self.pubsub = None
            self.active = set()
        for future in self._barriers.values():
            if not future.done():
                future.set_result(None)
        self._barriers.clear()
