"""History in Redis: positions, kept messages and recovery, shared by every process.

Each channel published with ``history=True`` has two keys (named in :class:`.redis_wire.Names`):

* ``{prefix}:{<channel>}:hm``, a hash: ``e`` the epoch, ``o`` the newest offset;
* ``{prefix}:{<channel>}:h``, a stream of the kept messages, entry ID ``<offset>-0``, fields
  ``t`` (Redis server time in microseconds), ``f`` (the frame's kind flags, as in the envelope)
  and ``d`` (the payload).

``{<channel>}`` is a Redis Cluster hash tag, so a channel's two keys share one slot and one
script may touch both. Every operation is one Lua script (EVALSHA; redis-py loads it again after
NOSCRIPT), so it is atomic: two processes publishing at once get offsets one apart, and every
subscriber receives them in that order, because the script itself PUBLISHes the positioned
envelope.

Guarantees:

* **One round trip per publish** (three on the first publish after Redis lost its script cache,
  e.g. a restart: NOSCRIPT, SCRIPT LOAD, EVALSHA). A publish without history is the plain
  PUBLISH it always was. As with any command, the pool retries once on a broken connection, so a
  publish cut off in flight may be kept twice (two offsets).
* **Redis restart or lost keys**: the next script finds no metadata and starts a new epoch
  (made by the caller, 64 random bits), dropping any stream left over; a client holding a
  position of the old epoch is told "epoch changed" and reloads. Nothing is ever replayed from
  a history the client's position does not belong to.
* **Memory is bounded** by ``size`` messages per channel (``MAXLEN`` exact, not ``~``: the
  bound and the "gap larger than history" answer are exact, as with the memory backend; trimming
  one entry per append costs little), so by ``size`` x channels in all.
* **Idle channels expire**: the stream ``ttl`` and the metadata ``meta_ttl`` after the channel's
  last publish (both keys get their EXPIRE on every publish). Messages older than ``ttl`` are
  dropped by their stored time, compared with Redis' own clock (TIME), never the local one.
"""

from __future__ import annotations

import math
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from ..frames import Frame
from ..history import Entry, HistoryLimits, Position, Recovery, decide, new_epoch
from .redis_client import PublishLine
from .redis_wire import Names, envelope_head, frame_flags, payload_bytes, rebuild_frame

__all__ = ["LATEST", "PUBLISH", "RECOVER", "RedisHistory"]

# Run with effects replication where it is not the default (Redis < 7), so that TIME may be read
# before writing.
_PREAMBLE = """
if redis.replicate_commands then redis.replicate_commands() end
"""

# The channel's (epoch, newest offset); a channel without metadata starts a new epoch and loses
# whatever stream an older epoch left behind.
_TOP = """
local function top(stream, meta, new_epoch, meta_ttl)
  local kept = redis.call('HMGET', meta, 'e', 'o')
  if kept[1] then return kept[1], tonumber(kept[2]) or 0 end
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', new_epoch, 'o', '0')
  redis.call('PEXPIRE', meta, meta_ttl)
  return new_epoch, 0
end
"""

# Delete the oldest entries stored ``ttl`` microseconds or more before Redis' TIME.
_EXPIRE = """
local function expire(stream, ttl)
  local now = redis.call('TIME')
  local horizon = tonumber(now[1]) * 1000000 + tonumber(now[2]) - ttl
  local count = 1
  while true do
    local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', count)
    local gone = {}
    for _, entry in ipairs(oldest) do
      if (tonumber(entry[2][2]) or 0) > horizon then break end
      gone[#gone + 1] = entry[1]
    end
    if #gone > 0 then redis.call('XDEL', stream, unpack(gone)) end
    if #gone < count then return end
    count = 64
  end
end
"""

#: KEYS: stream, metadata. ARGV: new epoch, size, ttl (ms), meta_ttl (ms), pub/sub channel,
#: envelope head (up to the exclude id), kind flags, payload. Returns {epoch, offset}.
PUBLISH = (
    _PREAMBLE
    + """
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch, 'o', '0')
end
local offset = redis.call('HINCRBY', KEYS[2], 'o', 1)
local now = redis.call('TIME')
local at = now[1] .. string.format('%06d', tonumber(now[2]))
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], string.format('%d-0', offset),
  't', at, 'f', ARGV[7], 'd', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local bytes, rest = {}, offset
for i = 8, 1, -1 do
  bytes[i] = rest % 256
  rest = math.floor(rest / 256)
end
redis.call('PUBLISH', ARGV[5],
  ARGV[6] .. string.char(#epoch) .. epoch .. string.char(unpack(bytes)) .. ARGV[8])
return {epoch, offset}
"""
)

#: KEYS: stream, metadata. ARGV: new epoch, meta_ttl (ms), ttl (us), the client's epoch and
#: offset, max_replay. Returns {epoch, offset, kept, entries after the client's offset}; the
#: entries are read only when they can make a recovery (same epoch, at most max_replay behind).
RECOVER = (
    _PREAMBLE
    + _TOP
    + _EXPIRE
    + """
local epoch, offset = top(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
expire(KEYS[1], tonumber(ARGV[3]))
local after = {}
local from = tonumber(ARGV[5])
if ARGV[4] == epoch and from and from >= 0 and from < offset
    and offset - from <= tonumber(ARGV[6]) then
  after = redis.call('XRANGE', KEYS[1], string.format('%d-0', from + 1), '+',
    'COUNT', offset - from)
end
return {epoch, offset, redis.call('XLEN', KEYS[1]), after}
"""
)

#: KEYS: stream, metadata. ARGV: new epoch, meta_ttl (ms), ttl (us), count. Returns
#: {epoch, offset, up to count newest entries, newest first}.
LATEST = (
    _PREAMBLE
    + _TOP
    + _EXPIRE
    + """
local epoch, offset = top(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
expire(KEYS[1], tonumber(ARGV[3]))
local newest = {}
local count = tonumber(ARGV[4])
if count > 0 then
  newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', count)
end
return {epoch, offset, newest}
"""
)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


class RedisHistory:
    """The history of every channel published with ``history=True``, kept in Redis.

    Methods take the command client and raise what redis-py raises; the backend turns network
    failures into ``BackendUnavailable``.
    """

    def __init__(self, names: Names, limits: HistoryLimits) -> None:
        self.names = names
        self.limits = limits
        # script arguments that never change
        self._size = str(limits.size)
        self._ttl_ms = str(max(1, math.ceil(limits.ttl * 1000)))
        self._meta_ttl_ms = str(max(1, math.ceil(limits.meta_ttl * 1000)))
        self._ttl_us = str(max(1, round(limits.ttl * 1_000_000)))
        self._client: Redis | None = None
        self._scripts: tuple[AsyncScript, AsyncScript, AsyncScript] | None = None
        #: Publishes kept, recoveries asked and granted, messages replayed, unreadable entries.
        self.published = 0
        self.recoveries = 0
        self.recovered = 0
        self.replayed = 0
        self.skipped = 0

    def _bound(self, redis: Redis) -> tuple[AsyncScript, AsyncScript, AsyncScript]:
        """The three scripts, registered with ``redis`` (a new client after a restart)."""
        if self._scripts is None or self._client is not redis:
            self._client = redis
            self._scripts = (
                redis.register_script(PUBLISH),
                redis.register_script(RECOVER),
                redis.register_script(LATEST),
            )
        return self._scripts

    def _keys(self, channel: str) -> tuple[str, str]:
        return self.names.history_key(channel), self.names.history_meta_key(channel)

    async def publish(
        self, line: PublishLine, channel: str, frame: Frame, exclude: str | None
    ) -> Position:
        """Append ``frame`` to ``channel``'s history and publish it with its position."""
        script = self._bound(line.client)[0]
        args = (
            new_epoch(),
            self._size,
            self._ttl_ms,
            self._meta_ttl_ms,
            self.names.channel_key(channel),
            envelope_head(frame, exclude, positioned=True),
            frame_flags(frame),
            payload_bytes(frame),
        )
        keys = self._keys(channel)
        try:  # once, never retried: a publish must not run twice (see execute_once)
            reply = await line.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:  # not run: a restarted Redis does not know the script yet
            reply = await line.execute("EVAL", script.script, len(keys), *keys, *args)
        epoch, offset = reply
        self.published += 1
        return Position(_text(epoch), int(offset))

    async def recover(self, redis: Redis, channel: str, position: Position) -> Recovery:
        """What ``channel`` published after ``position``, decided by :func:`history.decide`."""
        limits = self.limits
        script = self._bound(redis)[1]
        args = (
            new_epoch(),
            self._meta_ttl_ms,
            self._ttl_us,
            position.epoch,
            position.offset,
            limits.max_replay,
        )
        epoch, offset, kept, after = await script(self._keys(channel), args, redis)
        top = Position(_text(epoch), int(offset))
        recovery = decide(top, position, self._entries(after), int(kept), limits)
        self.recoveries += 1
        if recovery.recovered:
            self.recovered += 1
            self.replayed += len(recovery.entries)
        return recovery

    async def latest(self, redis: Redis, channel: str, count: int) -> tuple[Position, list[Entry]]:
        """``channel``'s newest position and up to ``count`` newest kept messages, oldest first."""
        script = self._bound(redis)[2]
        args = (new_epoch(), self._meta_ttl_ms, self._ttl_us, max(count, 0))
        epoch, offset, newest = await script(self._keys(channel), args, redis)
        entries = self._entries(newest)
        entries.reverse()
        return Position(_text(epoch), int(offset)), entries

    def _entries(self, raw: list[Any]) -> list[Entry]:
        """Stream entries as :class:`Entry`; one that cannot be read is skipped (and counted),
        which a recovery then reports as a gap."""
        entries: list[Entry] = []
        for entry_id, fields in raw:
            try:
                offset = int(_text(entry_id).partition("-")[0])
                at, flags, payload = int(fields[1]), int(fields[3]), _bytes(fields[5])
                entries.append(Entry(offset, rebuild_frame(flags, payload), at / 1_000_000))
            except (ValueError, IndexError, TypeError):  # EnvelopeError is a ValueError
                self.skipped += 1
        return entries

    def stats(self) -> dict[str, int]:
        """Counters for ``RedisBackend.stats()['history']``."""
        return {
            "published": self.published,
            "recoveries": self.recoveries,
            "recovered": self.recovered,
            "replayed": self.replayed,
            "skipped": self.skipped,
        }
