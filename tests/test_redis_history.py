"""History in Redis: positions shared by every process, recovery after a gap, and its limits,
against a real redis-server (backends built directly, each bound to a recording sink)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pytest
import redis.asyncio as aioredis

from asgi_groups import BackendUnavailable, Frame
from asgi_groups.backends.base import HistoryUnavailable, PresenceEvent
from asgi_groups.backends.redis import EnvelopeError, RedisBackend, pack_frame, unpack_frame
from asgi_groups.frames import encode_json
from asgi_groups.history import (
    EPOCH_CHANGED,
    EXPIRED,
    FROM_THE_FUTURE,
    GAP_TOO_LARGE,
    REPLAY_CAP,
    HistoryLimits,
    Position,
)
from tests.support.redis import FAST, GUARD, RedisServer
from tests.support.waiting import wait_until

ROOM = "g:room"
DEFAULT = HistoryLimits()


class Recorder:
    """A sink that keeps every delivery, with its position."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, Frame, str | None, Position | None]] = []

    def deliver(
        self, channel: str, frame: Frame, exclude: str | None, position: Position | None = None
    ) -> int:
        self.deliveries.append((channel, frame, exclude, position))
        return 1

    def positions(self) -> list[Position | None]:
        return [position for _, _, _, position in self.deliveries]

    def control(self, op: str, args: dict[str, Any]) -> None:
        return None

    def presence(self, group: str) -> dict[str, int]:
        return {}

    def presence_snapshot(self) -> dict[str, dict[str, int]]:
        return {}

    def presence_event(self, event: PresenceEvent) -> None:
        return None


Open = Callable[..., Awaitable[tuple[RedisBackend, Recorder]]]


@pytest.fixture
async def open_backend(redis_url: str, prefix: str) -> AsyncIterator[Open]:
    """``await open_backend(limits, subscribe=(ROOM,), **options)``: a started backend (one
    "process") keeping history within ``limits`` (none: ``None``), and its sink; all closed
    afterwards."""
    opened: list[RedisBackend] = []

    async def open_(
        limits: HistoryLimits | None = DEFAULT,
        *,
        subscribe: Iterable[str] = (ROOM,),
        **options: Any,
    ) -> tuple[RedisBackend, Recorder]:
        # a health check as patient as production's: a loaded machine's slow loop must not
        # look like a Redis outage here (none of these tests is about detecting one)
        settings = {**FAST, "health_check_interval": 5.0, **options}
        backend = RedisBackend(redis_url, prefix=prefix, **settings)
        if limits is not None:
            backend.keep_history(limits)
        sink = Recorder()
        backend.bind(sink)
        await backend.start()
        opened.append(backend)
        for channel in subscribe:
            await backend.subscribe(channel)
        return backend, sink

    try:
        yield open_
    finally:
        for backend in reversed(opened):
            await backend.close()


def redis_time(server: RedisServer) -> float:
    """Redis' own clock, in seconds."""
    with server.client() as raw:
        seconds, micros = raw.time()
    return seconds + micros / 1_000_000


async def publish_texts(backend: RedisBackend, *texts: str) -> list[Position]:
    positions = []
    for text in texts:
        position = await backend.publish(ROOM, Frame.text(text), None, history=True)
        assert position is not None
        positions.append(position)
    return positions


def texts(entries: Iterable[Any]) -> list[str]:
    return [entry.frame.event["text"] for entry in entries]


# -- the envelope ------------------------------------------------------------------------------


def test_positioned_and_json_envelopes_round_trip() -> None:
    position = Position("0123456789abcdef", 2**40 + 7)
    for frame in (Frame.text("héllo ☃"), Frame.binary(b"\x00\xff"), encode_json({"n": [1]})):
        for place in (None, position):
            got, exclude, back = unpack_frame(pack_frame(frame, "ab" * 16, place))
            assert (got.event, got.size, got.json) == (frame.event, frame.size, frame.json)
            assert exclude == "ab" * 16 and back == place


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\x04\x00",  # positioned, but nothing follows
        b"\x01\x04\x00\x10abc",  # an epoch longer than the envelope
        b"\x01\x04\x00\x02ab\x00\x00\x00",  # an offset cut short
        b"\x01\x04\x00\x02\xff\xfe" + bytes(8) + b"x",  # an epoch that is not ASCII
        b"\x01\x03\x00x",  # binary and JSON at once
        b"\x01\x00\x00\xff\xfe",  # text that is not UTF-8
        b"\x01\x00\x09ab",  # an exclude id longer than the envelope
    ],
)
def test_malformed_envelopes_are_refused(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        unpack_frame(data)


async def test_the_envelope_redis_publishes_is_the_one_pack_frame_builds(
    open_backend: Open, redis_url: str, prefix: str
) -> None:
    backend, _ = await open_backend()
    raw = aioredis.Redis.from_url(redis_url)
    pubsub = raw.pubsub()
    try:
        await pubsub.subscribe(f"{prefix}:{ROOM}")
        frames = [Frame.text("héllo"), Frame.binary(b"\x00\x01"), encode_json({"a": "b"})]
        for frame in frames:
            position = await backend.publish(ROOM, frame, "c" * 32, history=True)
            async with asyncio.timeout(GUARD):
                message = None
                while message is None:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            assert message["data"] == pack_frame(frame, "c" * 32, position)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await raw.aclose()


# -- positions ---------------------------------------------------------------------------------


async def test_two_processes_publishing_at_once_get_contiguous_offsets_in_order(
    open_backend: Open,
) -> None:
    (a, a_sink), (b, b_sink) = await open_backend(), await open_backend()
    _, watcher = await open_backend()  # a process that only listens
    sends = [(backend, f"{name}{i}") for i in range(60) for backend, name in ((a, "a"), (b, "b"))]
    positions = await asyncio.gather(
        *(backend.publish(ROOM, Frame.text(text), None, history=True) for backend, text in sends)
    )
    assert all(position is not None for position in positions)
    epochs = {position.epoch for position in positions if position is not None}
    assert len(epochs) == 1
    epoch = epochs.pop()
    by_offset = {p.offset: text for p, (_, text) in zip(positions, sends, strict=True) if p}
    assert sorted(by_offset) == list(range(1, 121))  # no repeat, no hole

    expected = [Position(epoch, offset) for offset in range(1, 121)]
    for sink in (a_sink, b_sink, watcher):
        await wait_until(lambda sink=sink: len(sink.deliveries) == 120)
        assert sink.positions() == expected  # every subscriber, in order
        assert [frame.event["text"] for _, frame, _, _ in sink.deliveries] == [
            by_offset[offset] for offset in range(1, 121)
        ]
    assert a.stats()["history"]["published"] + b.stats()["history"]["published"] == 120


async def test_keys_are_named_per_channel_under_the_prefix(
    open_backend: Open, redis_server: RedisServer, prefix: str
) -> None:
    backend, _ = await open_backend()
    positions = await publish_texts(backend, "x", "y")
    stream, meta = f"{prefix}:{{{ROOM}}}:h", f"{prefix}:{{{ROOM}}}:hm"
    assert (backend.names.history_key(ROOM), backend.names.history_meta_key(ROOM)) == (stream, meta)
    with redis_server.client() as raw:
        assert raw.type(stream) == "stream" and raw.type(meta) == "hash"
        assert raw.hgetall(meta) == {"e": positions[0].epoch, "o": "2"}
        assert [entry_id for entry_id, _ in raw.xrange(stream)] == ["1-0", "2-0"]


# -- recovery ----------------------------------------------------------------------------------


async def test_a_client_back_through_another_process_gets_exactly_what_it_missed(
    open_backend: Open,
) -> None:
    a, a_sink = await open_backend()
    b, _ = await open_backend()
    other, _ = await open_backend(subscribe=(), listen=False)  # where the client comes back
    (seen,) = await publish_texts(a, "seen")
    missed = [Frame.text("héllo ☃"), Frame.binary(b"\x00\xff\x01"), encode_json({"n": 1})]
    for frame in missed:
        await b.publish(ROOM, frame, "ab" * 16, history=True)

    recovery = await other.recover(ROOM, seen)
    assert recovery.recovered and recovery.reason is None
    assert recovery.position == Position(seen.epoch, 4)
    assert [entry.offset for entry in recovery.entries] == [2, 3, 4]
    for entry, frame in zip(recovery.entries, missed, strict=True):
        assert (entry.frame.event, entry.frame.size, entry.frame.json) == (
            frame.event,
            frame.size,
            frame.json,
        )
    assert [entry.at for entry in recovery.entries] == sorted(e.at for e in recovery.entries)

    again = await other.recover(ROOM, recovery.position)  # nothing missed since
    assert again.recovered and again.entries == [] and again.position == recovery.position
    await wait_until(lambda: len(a_sink.deliveries) == 4)
    live = a_sink.deliveries[-1]
    assert live[1].json and live[2] == "ab" * 16 and live[3] == Position(seen.epoch, 4)
    assert other.stats()["history"] == {
        "published": 0,
        "recoveries": 2,
        "recovered": 2,
        "replayed": 3,
        "skipped": 0,
    }


async def test_latest_gives_the_newest_messages_oldest_first(open_backend: Open) -> None:
    backend, _ = await open_backend(HistoryLimits(size=10))
    start, nothing = await backend.latest(ROOM, 5)  # a channel that never published
    assert start.offset == 0 and nothing == []
    await publish_texts(backend, "one", "two", "three")
    top, entries = await backend.latest(ROOM, 2)
    assert top == Position(start.epoch, 3)
    assert [entry.offset for entry in entries] == [2, 3] and texts(entries) == ["two", "three"]
    assert (await backend.latest(ROOM, 0))[1] == []
    recovery = await backend.recover(ROOM, start)  # the client that saw the empty channel
    assert recovery.recovered and texts(recovery.entries) == ["one", "two", "three"]


async def test_more_missed_than_size_is_a_gap_larger_than_history(
    open_backend: Open, redis_server: RedisServer
) -> None:
    backend, _ = await open_backend(HistoryLimits(size=3))
    positions = await publish_texts(backend, *"abcdef")
    recovery = await backend.recover(ROOM, positions[0])
    assert not recovery.recovered and recovery.reason == GAP_TOO_LARGE
    assert recovery.position == positions[-1] and recovery.entries == []
    within = await backend.recover(ROOM, positions[2])
    assert within.recovered and texts(within.entries) == ["d", "e", "f"]
    with redis_server.client() as raw:
        assert raw.xlen(backend.names.history_key(ROOM)) == 3  # exact MAXLEN


async def test_replay_is_capped(open_backend: Open) -> None:
    backend, _ = await open_backend(HistoryLimits(size=10, max_replay=2))
    positions = await publish_texts(backend, *"abcde")
    capped = await backend.recover(ROOM, positions[0])
    assert not capped.recovered and capped.reason == REPLAY_CAP
    recovery = await backend.recover(ROOM, positions[2])
    assert recovery.recovered and texts(recovery.entries) == ["d", "e"]


@pytest.mark.parametrize("offset", [3, -1, 2**70])
async def test_an_offset_from_the_future_is_refused(open_backend: Open, offset: int) -> None:
    backend, _ = await open_backend()
    top = (await publish_texts(backend, "a", "b"))[-1]
    recovery = await backend.recover(ROOM, Position(top.epoch, offset))
    assert not recovery.recovered and recovery.reason == FROM_THE_FUTURE
    assert recovery.position == top


# -- expiry ------------------------------------------------------------------------------------


async def test_messages_older_than_ttl_by_redis_time_are_expired(
    open_backend: Open, redis_server: RedisServer
) -> None:
    backend, _ = await open_backend(HistoryLimits(ttl=1.0, meta_ttl=60.0))
    positions = await publish_texts(backend, "a", "b")
    _, entries = await backend.latest(ROOM, 2)
    stream = backend.names.history_key(ROOM)
    with redis_server.client() as raw:
        raw.persist(stream)  # only the stored times can expire the messages now
    await wait_until(lambda: redis_time(redis_server) > entries[-1].at + 1.0)

    recovery = await backend.recover(ROOM, Position(positions[0].epoch, 0))
    assert not recovery.recovered and recovery.reason == EXPIRED
    assert recovery.position == positions[-1]
    assert (await backend.recover(ROOM, positions[-1])).recovered  # nothing missed
    assert (await backend.latest(ROOM, 5)) == (positions[-1], [])
    with redis_server.client() as raw:
        assert raw.xlen(stream) == 0  # dropped from Redis, not only from the answer


async def test_both_keys_get_a_ttl(open_backend: Open, redis_server: RedisServer) -> None:
    backend, _ = await open_backend(HistoryLimits(ttl=300.0, meta_ttl=3600.0))
    names = backend.names
    await backend.latest("g:quiet", 1)  # a position handed out for a channel with no message
    await publish_texts(backend, "a")
    with redis_server.client() as raw:
        assert 0 < raw.pttl(names.history_key(ROOM)) <= 300_000
        assert 300_000 < raw.pttl(names.history_meta_key(ROOM)) <= 3_600_000
        assert 0 < raw.pttl(names.history_meta_key("g:quiet")) <= 3_600_000
        assert not raw.exists(names.history_key("g:quiet"))


async def test_a_channel_idle_past_meta_ttl_leaves_nothing_and_starts_a_new_epoch(
    open_backend: Open, redis_server: RedisServer, prefix: str
) -> None:
    backend, sink = await open_backend(HistoryLimits(ttl=0.3, meta_ttl=0.6))
    old = (await publish_texts(backend, "a", "b"))[-1]
    with redis_server.client() as raw:
        await wait_until(lambda: not raw.keys(f"{prefix}:{{*"))  # Redis expired both keys

    recovery = await backend.recover(ROOM, old)
    assert not recovery.recovered and recovery.reason == EPOCH_CHANGED
    assert recovery.position.epoch != old.epoch and recovery.position.offset == 0
    (first,) = await publish_texts(backend, "c")
    assert first == Position(recovery.position.epoch, 1)
    await wait_until(lambda: len(sink.deliveries) == 3)
    assert sink.positions()[-1] == first


async def test_lost_metadata_never_replays_the_old_stream(
    open_backend: Open, redis_server: RedisServer
) -> None:
    backend, _ = await open_backend()
    old = (await publish_texts(backend, "a", "b", "c"))[0]
    with redis_server.client() as raw:
        raw.delete(backend.names.history_meta_key(ROOM))  # e.g. evicted; the stream is left
    (first,) = await publish_texts(backend, "new")
    assert first.epoch != old.epoch and first.offset == 1
    assert texts((await backend.latest(ROOM, 10))[1]) == ["new"]
    assert (await backend.recover(ROOM, old)).reason == EPOCH_CHANGED


# -- outages -----------------------------------------------------------------------------------


async def test_a_redis_restart_is_an_epoch_change(
    open_backend: Open, redis_server: RedisServer
) -> None:
    up = asyncio.Event()
    backend, sink = await open_backend(on_backend_up=up.set)
    old = (await publish_texts(backend, "a", "b"))[-1]
    redis_server.restart()  # empty: nothing was saved, the script cache is gone too
    async with asyncio.timeout(GUARD):
        await up.wait()

    recovery = await backend.recover(ROOM, old)
    assert not recovery.recovered and recovery.reason == EPOCH_CHANGED
    (first,) = await publish_texts(backend, "after")
    assert first == Position(recovery.position.epoch, 1)
    await wait_until(lambda: sink.positions()[-1:] == [first])


async def test_history_calls_raise_backend_unavailable_while_redis_is_down(
    open_backend: Open, redis_server: RedisServer
) -> None:
    listening, _ = await open_backend()
    publisher, _ = await open_backend(subscribe=(), listen=False)
    (position,) = await publish_texts(listening, "a")
    redis_server.kill()
    for backend in (listening, publisher):
        with pytest.raises(BackendUnavailable):
            await backend.recover(ROOM, position)
        with pytest.raises(BackendUnavailable):
            await backend.latest(ROOM, 10)
        with pytest.raises(BackendUnavailable):
            await backend.publish(ROOM, Frame.text("lost"), None, history=True)


async def test_foreign_malformed_envelopes_are_skipped_and_counted(
    open_backend: Open, redis_server: RedisServer, prefix: str
) -> None:
    backend, sink = await open_backend()
    garbage = [b"\x01\x04\x00", b"\x01\x04\x00\x10abc", b"\x01\x03\x00x", b"\x01\x00\x00\xff"]
    with redis_server.client() as raw:
        for data in garbage:
            raw.publish(f"{prefix}:{ROOM}", data)
    (position,) = await publish_texts(backend, "fine")
    await wait_until(lambda: len(sink.deliveries) == 1)
    assert sink.positions() == [position]
    stats = backend.stats()
    assert stats["skipped"] == len(garbage) and stats["errors"] == 0


# -- history off -------------------------------------------------------------------------------


async def test_publish_without_history_keeps_nothing(
    open_backend: Open, redis_server: RedisServer
) -> None:
    kept, sink = await open_backend()
    assert await kept.publish(ROOM, Frame.text("plain"), None) is None
    await wait_until(lambda: len(sink.deliveries) == 1)
    assert sink.positions() == [None]
    with redis_server.client() as raw:
        assert not raw.exists(kept.names.history_key(ROOM), kept.names.history_meta_key(ROOM))
    assert kept.stats()["history"]["published"] == 0 and kept.stats()["published"] == 1

    off, off_sink = await open_backend(None)  # keep_history never called
    assert await off.publish(ROOM, Frame.text("x"), None, history=True) is None
    await wait_until(lambda: len(off_sink.deliveries) == 1)
    assert off_sink.positions() == [None]
    assert "history" not in off.stats()
    with pytest.raises(HistoryUnavailable):
        await off.recover(ROOM, Position("e", 0))
    with pytest.raises(HistoryUnavailable):
        await off.latest(ROOM, 1)
