"""Presence in Redis: write-behind of local counts, heartbeats, pruning, and reading totals.

Each process keeps one hash per group, ``{user_id: connections}``, and a process key, all with
a TTL of ``presence_ttl``; a heartbeat renews their TTLs every third of it (one script call per
``REFRESH_BATCH`` keys), so the entries of a crashed process expire on their own. A membership
change only records the new count (never blocks); a writer task sends what accumulated in one
MULTI, with the join/leave events. While Redis is down nothing is written: reconnecting
rewrites everything, and so does a heartbeat after a failed write or that finds an entry gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Literal

from redis.asyncio import Redis

from ..errors import BackendUnavailable
from .base import PresenceEvent, Sink
from .redis_client import NETWORK_ERRORS, Timing
from .redis_wire import Names, pack_json

__all__ = ["REFRESH_BATCH", "Presence"]

logger = logging.getLogger("asgi_groups.redis")

#: Keys whose TTL one heartbeat call renews.
REFRESH_BATCH = 1000
#: Renews the TTL (ARGV[1], ms) of every key; returns how many no longer existed.
_RENEW = """
local missing = 0
for _, key in ipairs(KEYS) do
  if redis.call('pexpire', key, ARGV[1]) == 0 then missing = missing + 1 end
end
return missing
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Presence:
    """This process's presence entries in Redis, and the sum over every live process."""

    def __init__(self, names: Names, timing: Timing, is_down: Callable[[], bool]) -> None:
        self.names = names
        self.timing = timing
        self.is_down = is_down
        self.redis: Redis | None = None
        self.sink: Sink | None = None
        #: True while changes are recorded (a started, listening backend).
        self.active = False
        # the latest local count per (group, user) and the events, not yet written
        self._pending: dict[tuple[str, str], int] = {}
        self._events: list[PresenceEvent] = []
        #: Changes recorded so far, and how many of them have been written (or given up on).
        self.marked = 0
        self.flushed = 0
        self._groups: set[str] = set()
        self._lock: asyncio.Lock | None = None
        self.writer: asyncio.Task[None] | None = None
        self.heartbeat: asyncio.Task[None] | None = None
        self.errors = 0
        #: The heartbeat must rewrite every entry (the first one, or a write failed since).
        self.rewrite_needed = True
        self._renew: Any = None

    def open(self, redis: Redis, sink: Sink) -> None:
        self.redis = redis
        self.sink = sink
        self._lock = asyncio.Lock()
        self._renew = redis.register_script(_RENEW)

    def start_heartbeat(self) -> None:
        self.heartbeat = asyncio.get_running_loop().create_task(
            self._heartbeat_loop(), name="asgi_groups.redis.heartbeat"
        )

    def tasks(self) -> list[asyncio.Task[Any]]:
        return [t for t in (self.heartbeat, self.writer) if t is not None]

    def reset(self) -> None:
        """After closing: nothing left to write."""
        self.heartbeat = self.writer = None
        self._pending.clear()
        self._events.clear()
        self.flushed = self.marked

    def changed(
        self, group: str, user_id: str, count: int, event: Literal["join", "leave"] | None
    ) -> None:
        if not self.active:
            return
        self._pending[(group, user_id)] = count
        if event is not None:
            self._events.append(
                {"type": "presence", "group": group, "user_id": user_id, "event": event}
            )
        self.marked += 1
        if self.writer is None or self.writer.done():
            self.writer = asyncio.get_running_loop().create_task(
                self._write_behind(), name="asgi_groups.redis.presence"
            )

    async def _write_behind(self) -> None:
        while self.flushed < self.marked and self.active:
            await self.flush()

    async def flush(self) -> None:
        """Write every change recorded so far (one MULTI); a no-op while Redis is down."""
        target = self.marked
        if self.flushed >= target or self._lock is None:
            return
        async with self._lock:
            if self.flushed < target:
                await self._write(full=False)

    async def rewrite(self) -> None:
        """Rewrite all of this process's entries (after a reconnection Redis may have none)."""
        assert self._lock is not None
        async with self._lock:
            await self._write(full=True)

    async def keep_alive(self) -> None:
        """Renew the TTL of this process's entries; rewrite them all when a write failed since
        the last rewrite or Redis lost one (a renewal costs one call per ``REFRESH_BATCH`` keys,
        a rewrite one MULTI of three commands per group)."""
        assert self._lock is not None and self.sink is not None
        async with self._lock:
            if not self.rewrite_needed:
                if self.flushed < self.marked:
                    await self._write(full=False)  # keys of new members exist before renewal
                names = self.names
                keys = [names.process_key()]
                keys += [names.presence_key(group) for group in self.sink.presence_snapshot()]
                ttl = self.timing.ttl_ms
                missing = 0
                for i in range(0, len(keys), REFRESH_BATCH):
                    missing += int(await self._renew(keys=keys[i : i + REFRESH_BATCH], args=[ttl]))
                if not missing:
                    return
                logger.info("%d presence entries were gone from Redis; rewriting all", missing)
            await self._write(full=True)

    async def _write(self, *, full: bool) -> None:
        """Write pending changes, or rewrite all of this process's entries (``full``)."""
        generation = self.marked
        pending, self._pending = self._pending, {}
        events, self._events = self._events, []
        redis, names = self.redis, self.names
        try:
            if redis is None or (self.is_down() and not full):
                return
            ttl = self.timing.ttl_ms
            async with redis.pipeline(transaction=True) as pipe:
                if full:
                    assert self.sink is not None
                    snapshot = self.sink.presence_snapshot()
                    for group in self._groups.difference(snapshot):
                        pipe.delete(names.presence_key(group))
                    for group, counts in snapshot.items():
                        key = names.presence_key(group)
                        pipe.delete(key)
                        pipe.hset(key, mapping=counts)  # type: ignore[arg-type]
                        pipe.pexpire(key, ttl)
                    self._groups = set(snapshot)
                    info = {"pid": os.getpid(), "host": socket.gethostname(), "at": time.time()}
                    pipe.set(names.process_key(), json.dumps(info), px=ttl)
                    pipe.sadd(names.processes_key, names.process_id)
                    self.rewrite_needed = False
                else:
                    touched: set[str] = set()
                    for (group, user_id), count in pending.items():
                        key = names.presence_key(group)
                        if count > 0:
                            pipe.hset(key, user_id, count)
                            touched.add(key)
                            self._groups.add(group)
                        else:
                            pipe.hdel(key, user_id)
                    for key in touched:
                        pipe.pexpire(key, ttl)
                for event in events:
                    pipe.publish(names.presence_channel, pack_json(event))
                await pipe.execute()
        except NETWORK_ERRORS as exc:
            self.errors += 1
            self.rewrite_needed = True
            logger.warning("could not write presence to Redis: %s", exc)
            if full:
                raise
        finally:
            self.flushed = max(self.flushed, generation)

    async def _heartbeat_loop(self) -> None:
        """Every ``presence_ttl / 3``: keep this process's presence alive, prune dead processes."""
        while True:
            await asyncio.sleep(self.timing.presence_ttl / 3)
            if self.is_down():
                continue
            try:
                async with asyncio.timeout(self.timing.attempt_timeout):
                    await self.keep_alive()
                    await self._prune_processes()
            except (*NETWORK_ERRORS, TimeoutError) as exc:
                logger.warning("presence heartbeat failed: %s", exc)
            except Exception:  # never let the heartbeat die: presence would silently expire
                self.errors += 1
                logger.exception("presence heartbeat failed")

    async def _prune_processes(self) -> None:
        redis, names = self.redis, self.names
        assert redis is not None
        members = await redis.smembers(names.processes_key)
        others = [p for p in map(_text, members) if p != names.process_id]
        if not others:
            return
        async with redis.pipeline(transaction=False) as pipe:
            for process_id in others:
                pipe.exists(names.process_key(process_id))
            alive = await pipe.execute()
        dead = [p for p, exists in zip(others, alive, strict=True) if not exists]
        if dead:
            await redis.srem(names.processes_key, *dead)

    async def delete(self) -> None:
        """Remove this process's entries (it is closing)."""
        redis, names = self.redis, self.names
        assert redis is not None
        async with redis.pipeline(transaction=True) as pipe:
            for group in self._groups:
                pipe.delete(names.presence_key(group))
            pipe.delete(names.process_key())
            pipe.srem(names.processes_key, names.process_id)
            await pipe.execute()
        self._groups.clear()

    async def read(self, redis: Redis, group: str, *, skip_self: bool) -> dict[str, int]:
        """``{user_id: connections}`` in ``group`` over every process Redis knows.

        ``skip_self`` leaves out this process's entry (its caller counts locally, fresher).
        """
        names = self.names
        try:
            members = await redis.smembers(names.processes_key)
            others = [_text(m) for m in members]
            if skip_self:
                others = [p for p in others if p != names.process_id]
            async with redis.pipeline(transaction=False) as pipe:
                for process_id in others:
                    pipe.hgetall(names.presence_key(group, process_id))
                results: list[dict[bytes, bytes]] = await pipe.execute()
        except NETWORK_ERRORS as exc:
            self.errors += 1
            raise BackendUnavailable(f"could not read presence from Redis: {exc}") from exc
        totals: dict[str, int] = {}
        for entries in results:
            for user_id, count in entries.items():
                key = user_id.decode()
                totals[key] = totals.get(key, 0) + int(count)
        return totals
