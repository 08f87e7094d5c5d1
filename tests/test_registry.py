"""Registry routing, encode-once, bounded queues and stats, without sockets."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule
from pydantic import BaseModel

import asgi_groups.frames as frames
from asgi_groups import (
    Connection,
    ConnectionClosed,
    HistoryLimits,
    MessageTooLarge,
    Position,
    QueueLimits,
    Registry,
    RegistryClosed,
    SimpleUser,
)
from asgi_groups.backends.base import HistoryUnavailable
from asgi_groups.stream import Stream

from .fakes import Outbox, drained


async def tab(registry: Registry, user_id: int | None = None) -> tuple[Connection, Outbox]:
    out = Outbox()
    user = SimpleUser(user_id, f"user{user_id}") if user_id is not None else None
    return await registry.connect(out, user), out


async def recoverable(
    registry: Registry, user_id: int | None = None, groups: tuple[str, ...] = (), max_held: int = 10
) -> tuple[Connection, Outbox, Stream]:
    """A connection of a recoverable client, as ``RecoverableView`` makes one: its stream holds
    live messages until the resume releases it."""
    out, stream = Outbox(), Stream(max_held)
    user = SimpleUser(user_id, f"user{user_id}") if user_id is not None else None
    conn = await registry.connect(out, user, stream=stream)
    for group in groups:
        await registry.join(conn, group)
    return conn, out, stream


def envelopes(out: Outbox) -> list[Any]:
    return [json.loads(text) for text in out.texts]


async def test_group_user_broadcast_routing_with_tabs_and_exclude() -> None:
    async with Registry() as reg:
        (g1, o1), (g2, o2), (c1, o3), (anon, o4) = [
            await tab(reg, 1),
            await tab(reg, 1),  # greg's second tab
            await tab(reg, 2),
            await tab(reg),
        ]
        for conn in (g1, g2):
            await reg.join(conn, "boys")
        await reg.join(c1, "girls")
        await reg.send_group("boys", "to boys", exclude=g1)
        await reg.send_user(1, "to greg")
        await reg.send_user("2", "to chuck")
        await reg.broadcast("to all", exclude=anon)
        await drained(g1, g2, c1, anon)
        assert o1.texts == ["to greg", "to all"]
        assert o2.texts == ["to boys", "to greg", "to all"]
        assert o3.texts == ["to chuck", "to all"]
        assert o4.texts == []
        assert await reg.presence("boys") == {"1": 2}
        assert reg.groups_of(g1) == {"boys"}
        stats = reg.stats()
        assert (stats.connections, stats.users, stats.groups) == (4, 2, 2)
        assert stats.messages_sent == 4
        assert stats.deliveries == 1 + 2 + 1 + 3


async def test_json_is_encoded_once_per_send(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = frames.to_json

    def counting(obj: Any) -> bytes:
        nonlocal calls
        calls += 1
        return real(obj)

    monkeypatch.setattr(frames, "to_json", counting)

    class Note(BaseModel):
        text: str

    async with Registry() as reg:
        tabs = [await tab(reg, i) for i in range(50)]
        for conn, _ in tabs:
            await reg.join(conn, "all")
        await reg.send_group("all", {"text": "hello", "n": 1})
        assert calls == 1
        await reg.send_group("all", Note(text="model"))  # pydantic: its own serializer, once
        await drained(*(c for c, _ in tabs))
        for _, out in tabs:
            assert out.texts == ['{"text":"hello","n":1}', '{"text":"model"}']


async def test_bytes_go_out_as_binary_frames() -> None:
    async with Registry() as reg:
        conn, out = await tab(reg, 1)
        await reg.send_user(1, b"\x00\x01")
        await drained(conn)
        assert out.events == [{"type": "websocket.send", "bytes": b"\x00\x01"}]


async def test_idle_socket_written_at_once_and_a_blocked_one_drains_by_one_writer() -> None:
    """A ready socket is written inside the publish, by the publisher, without a task; a
    blocked one gets one writer task that writes everything queued once the client reads."""
    writers: list[asyncio.Task[Any] | None] = []
    out = Outbox()

    async def send(event: Any) -> None:
        writers.append(asyncio.current_task())
        await out(event)

    async with Registry() as reg:
        conn = await reg.connect(send, SimpleUser(1, "a"))
        me = asyncio.current_task()
        tasks = asyncio.all_tasks()
        await reg.send_user(1, "now")
        assert out.texts == ["now"] and writers == [me]  # written before send_user returned
        assert asyncio.all_tasks() == tasks  # and no task was made for it
        out.gate.clear()  # the client's transport is full: the next send has to wait
        for i in range(100):
            await reg.send_user(1, str(i))
        assert conn.queued[0] == 99  # the first waits inside send; publishing did not wait
        (writer,) = asyncio.all_tasks() - tasks  # one writer, however many frames
        out.gate.set()
        await writer  # it ends once everything is written: no writer while idle
        assert out.texts == ["now", *map(str, range(100))]
        assert writers[1] is me  # the first blocked send was started in place, then handed on
        assert set(writers[2:]) == {writer}
        assert conn.queued == (0, 0)


async def test_send_failing_at_once_or_returning_a_future() -> None:
    """A server whose ``send`` raises (client gone) drops that socket from the registry, and
    one whose ``send`` returns a Future instead of a coroutine still gets every frame."""
    loop = asyncio.get_running_loop()
    written: list[Any] = []

    async def gone(event: Any) -> None:
        raise OSError("connection reset")

    def future_send(event: Any) -> asyncio.Future[None]:
        written.append(event)
        future = loop.create_future()
        loop.call_soon(future.set_result, None)
        return future

    async with Registry() as reg:
        dead = await reg.connect(gone, SimpleUser(1, "a"))
        odd = await reg.connect(future_send, SimpleUser(2, "b"))
        ok, out = await tab(reg, 3)
        for conn in (dead, odd, ok):
            await reg.join(conn, "room")
        await reg.send_group("room", "one")
        await reg.send_group("room", "two")
        await drained(odd, ok)
        assert not dead.is_open and reg.groups_of(dead) == set()
        assert await reg.presence("room") == {"2": 1, "3": 1}
        assert [e["text"] for e in written] == ["one", "two"]
        assert out.texts == ["one", "two"]


async def test_slow_reader_is_closed_with_1013_and_others_get_everything() -> None:
    limits = QueueLimits(max_messages=10, max_bytes=10_000)
    async with Registry(limits=limits) as reg:
        slow, slow_out = await tab(reg, 1)
        fast, fast_out = await tab(reg, 2)
        slow_out.gate.clear()  # this client stops reading
        for conn in (slow, fast):
            await reg.join(conn, "room")
        for i in range(50):
            await reg.send_group("room", f"m{i}")
        await drained(fast)
        assert fast_out.texts == [f"m{i}" for i in range(50)]
        assert not slow.is_open
        assert reg.stats().slow_closed == 1
        assert await reg.presence("room") == {"2": 1}  # it left every group at once
        slow_out.gate.set()
        await drained(slow)
        assert slow_out.closes == [1013]


async def test_drop_oldest_keeps_the_newest() -> None:
    limits = QueueLimits(max_messages=3, overflow="drop_oldest")
    async with Registry(limits=limits) as reg:
        conn, out = await tab(reg, 1)
        out.gate.clear()
        await reg.send_user(1, "first")  # written in place: it waits inside the client's send
        for i in range(10):
            await reg.send_user(1, str(i))
        out.gate.set()
        await drained(conn)
        assert out.texts == ["first", "7", "8", "9"]
        assert reg.stats().dropped == 7
        assert conn.is_open


async def test_oversized_message_refused_at_sender() -> None:
    async with Registry(max_message_size=100) as reg:
        conn, out = await tab(reg, 1)
        with pytest.raises(MessageTooLarge):
            await reg.send_user(1, "x" * 101)
        await drained(conn)
        assert out.events == []


async def test_first_use_starts_the_registry_and_close_is_final() -> None:
    reg = Registry()
    conn, out = await tab(reg, 1)  # no start(), no lifespan: the first use starts it
    assert reg.started and reg.loop is asyncio.get_running_loop()
    await reg.broadcast("x")
    await drained(conn)
    assert out.texts == ["x"]
    await reg.close()
    with pytest.raises(RegistryClosed, match="closed"):
        await reg.broadcast("y")


async def test_send_on_closed_connection_raises() -> None:
    async with Registry() as reg:
        conn, out = await tab(reg, 1)
        conn.close(4000, "bye")
        with pytest.raises(ConnectionClosed):
            await conn.send("late")
        with pytest.raises(ConnectionClosed):
            await reg.join(conn, "g")
        await drained(conn)
        assert out.closes == [4000]


async def test_disconnect_user_closes_every_tab() -> None:
    async with Registry() as reg:
        (a, oa), (b, ob), (c, oc) = [await tab(reg, 1), await tab(reg, 1), await tab(reg, 2)]
        await reg.disconnect_user(1)
        await drained(a, b, c)
        assert oa.closes == ob.closes == [4401]
        assert oc.closes == []
        assert reg.stats().users == 1


def test_unknown_backend_url() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        Registry("kafka://x")


async def test_one_configuration_serves_memory_and_redis_urls() -> None:
    """``Registry(url, prefix=..., on_backend_down=...)`` works when url is memory:// too (a
    dev box without Redis); Redis-only tuning is refused with a message that says so."""
    downs: list[Exception] = []
    async with Registry("memory://", prefix="app", on_backend_down=downs.append) as registry:
        conn, out = await tab(registry, 1)
        await registry.send_user(1, "still works")
        await drained(conn)
        assert out.texts == ["still works"]
    assert downs == []
    with pytest.raises(TypeError, match="memory backend takes no health_check_interval"):
        Registry(health_check_interval=1.0)


class RegistryMachine(RuleBasedStateMachine):
    """join/leave/send/disconnect through a real Registry vs. a plain reference model."""

    conns = Bundle("conns")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.reg = Registry()
        self.run(self.reg.start())
        self.model: dict[Connection, tuple[str, set[str]]] = {}
        self.outs: dict[Connection, Outbox] = {}
        self.expected: dict[Connection, list[str]] = {}
        self.n = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.reg.close())
        self.loop.close()

    @rule(target=conns, user=st.sampled_from(["1", "2", "3"]))
    def connect(self, user: str) -> Connection:
        conn, out = self.run(tab(self.reg, int(user)))
        self.model[conn] = (user, set())
        self.outs[conn] = out
        self.expected[conn] = []
        return conn

    @rule(conn=conns, group=st.sampled_from(["a", "b"]))
    def join(self, conn: Connection, group: str) -> None:
        if conn in self.model:
            self.run(self.reg.join(conn, group))
            self.model[conn][1].add(group)

    @rule(conn=conns, group=st.sampled_from(["a", "b"]))
    def leave(self, conn: Connection, group: str) -> None:
        self.run(self.reg.leave(conn, group))
        if conn in self.model:
            self.model[conn][1].discard(group)

    @rule(group=st.sampled_from(["a", "b"]), exclude=st.none() | conns)
    def send_group(self, group: str, exclude: Connection | None) -> None:
        self.n += 1
        text = f"g{self.n}"
        self.run(self.reg.send_group(group, text, exclude=exclude))
        for conn, (_, groups) in self.model.items():
            if group in groups and conn is not exclude:
                self.expected[conn].append(text)

    @rule(user=st.sampled_from(["1", "2", "3"]))
    def send_user(self, user: str) -> None:
        self.n += 1
        text = f"u{self.n}"
        self.run(self.reg.send_user(user, text))
        for conn, (uid, _) in self.model.items():
            if uid == user:
                self.expected[conn].append(text)

    @rule(conn=consumes(conns))
    def disconnect(self, conn: Connection) -> None:
        conn.finish()
        self.model.pop(conn, None)

    @invariant()
    def deliveries_and_indexes_match(self) -> None:
        live = list(self.model)
        self.run(drained(*live))
        for conn in live:
            assert self.outs[conn].texts == self.expected[conn]
        for group in ("a", "b"):
            presence = self.run(self.reg.presence(group))
            want: dict[str, int] = {}
            for uid, groups in self.model.values():
                if group in groups:
                    want[uid] = want.get(uid, 0) + 1
            assert presence == want
        assert self.reg.stats().connections == len(self.model)


RegistryMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestRegistryMachine = RegistryMachine.TestCase


async def test_coalescing_joins_queued_text_frames() -> None:
    async with Registry(limits=QueueLimits(coalesce=16)) as reg:
        conn, out = await tab(reg, 1)
        for i in range(40):
            await reg.send_user(1, {"n": i})
        await reg.send_user(1, b"bin")  # binary frames are never joined
        await drained(conn)
        sizes = [len(t.split("\n")) for t in out.texts]
        assert sizes == [16, 16, 8]
        joined = [line for t in out.texts for line in t.split("\n")]
        assert joined == [f'{{"n":{i}}}' for i in range(40)]
        assert out.events[-1] == {"type": "websocket.send", "bytes": b"bin"}


async def test_no_coalescing_by_default() -> None:
    async with Registry() as reg:
        conn, out = await tab(reg, 1)
        for i in range(5):
            await reg.send_user(1, str(i))
        await drained(conn)
        assert out.texts == ["0", "1", "2", "3", "4"]


async def test_async_presence_callbacks_run_and_their_failures_are_logged() -> None:
    seen: list[str] = []
    failure_logged = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "presence callback" in record.getMessage() and record.exc_info:
                failure_logged.set()

    async def good(event: Any) -> None:
        seen.append(event["event"])

    async def bad(event: Any) -> None:
        raise RuntimeError("callback bug")

    handler = Watch()
    logging.getLogger("asgi_groups").addHandler(handler)
    try:
        async with Registry() as reg:
            reg.on_presence(good)
            reg.on_presence(bad)
            conn, _ = await tab(reg, 1)
            await reg.join(conn, "room")
            await failure_logged.wait()  # the failing callback is logged, not raised
    finally:
        logging.getLogger("asgi_groups").removeHandler(handler)
    assert seen == ["join"]


@pytest.mark.filterwarnings("error:coroutine .* was never awaited:RuntimeWarning")
async def test_presence_callbacks_not_yet_run_at_close_leave_no_warning() -> None:
    """A callback whose task had not run when the registry closed is cancelled cleanly."""

    async def slow(event: Any) -> None:
        await asyncio.sleep(0)

    reg = Registry()
    await reg.start()
    reg.on_presence(slow)
    conn, _ = await tab(reg, 1)
    await reg.join(conn, "room")
    await reg.close()


# -- recoverable connections and history -------------------------------------------------------


async def test_a_recoverable_connection_gets_each_message_in_an_envelope_with_its_position() -> (
    None
):
    async with Registry(history=HistoryLimits()) as reg:
        a, out_a, stream_a = await recoverable(reg, 1, ("room",))
        b, out_b, stream_b = await recoverable(reg, 2, ("room",))
        plain, out_plain = await tab(reg, 3)
        await reg.join(plain, "room")
        stream_a.release()  # resumed: live messages pass from now on
        stream_b.release()
        first = await reg.send_group("room", {"n": 1})
        second = await reg.send_group("room", "two")
        await drained(a, b, plain)
        assert first is not None and second == Position(first.epoch, 2) and first.offset == 1
        head = {"type": "ag.message", "channel": "g:room", "epoch": first.epoch}
        assert envelopes(out_a) == [
            {**head, "offset": 1, "data": {"n": 1}},
            {**head, "offset": 2, "data": "two"},
        ]
        assert out_b.texts == out_a.texts
        assert out_plain.texts == ['{"n":1}', "two"]  # a plain connection gets the message itself
        assert reg.stats().deliveries == 6


async def test_messages_are_held_while_a_connection_resumes_and_follow_its_replay_once() -> None:
    """What ``RecoverableView`` does on resume: the replay of what history kept, then the held
    live messages, none twice."""
    async with Registry(history=HistoryLimits()) as reg:
        conn, out, stream = await recoverable(reg, 1, ("room",))
        other, other_out = await tab(reg, 2)
        await reg.join(other, "room")
        first = await reg.send_group("room", "one")  # published while the client resumes
        assert first is not None
        await drained(conn, other)
        assert out.texts == [] and other_out.texts == ["one"]
        assert reg.stats().deliveries == 1  # held: not delivered yet
        seen = Position(first.epoch, 0)  # the client saw the channel before "one"
        answer = await reg.recover("g:room", seen)
        assert answer.recovered
        stream.start("g:room", seen)
        for frame in stream.replay("g:room", answer.position.epoch, answer.entries):
            await conn.send(frame)
        for frame in stream.release():  # "one" again, held: a duplicate of the replay
            await conn.send(frame)
        await reg.send_group("room", "two")
        await drained(conn)
        assert [(e["offset"], e["data"]) for e in envelopes(out)] == [(1, "one"), (2, "two")]


async def test_a_message_the_client_already_has_is_skipped_and_not_counted() -> None:
    async with Registry(history=HistoryLimits()) as reg:
        conn, out, stream = await recoverable(reg, 1, ("room",))
        top, _ = await reg.recent("g:room", 0)
        stream.start("g:room", Position(top.epoch, 1))  # the client has offset 1 already
        stream.release()
        await reg.send_group("room", "one")  # offset 1: skipped
        await reg.send_group("room", "two")
        await drained(conn)
        assert [(e["offset"], e["data"]) for e in envelopes(out)] == [(2, "two")]
        assert reg.stats().deliveries == 1


async def test_a_held_message_does_not_stop_delivery_to_the_connections_after_it() -> None:
    async with Registry() as reg:
        resuming, resuming_out, stream = await recoverable(reg, 1)  # broadcast reaches it first
        plain, plain_out = await tab(reg, 2)
        live, live_out, live_stream = await recoverable(reg, 3)
        live_stream.release()
        await reg.broadcast("hello")  # no history: an envelope without a position
        await drained(resuming, plain, live)
        assert resuming_out.texts == []
        assert plain_out.texts == ["hello"]
        assert envelopes(live_out) == [{"type": "ag.message", "channel": "*", "data": "hello"}]
        assert reg.stats().deliveries == 2
        for frame in stream.release():
            await resuming.send(frame)
        await drained(resuming)
        assert resuming_out.texts == live_out.texts


async def test_a_resume_holding_too_many_messages_is_closed_as_a_slow_reader() -> None:
    async with Registry() as reg:
        conn, out, _ = await recoverable(reg, 1, ("room",), max_held=2)
        other, other_out = await tab(reg, 2)
        await reg.join(other, "room")
        for i in range(3):
            await reg.send_group("room", str(i))  # the third does not fit the hold
        assert not conn.is_open
        stats = reg.stats()
        assert (stats.slow_closed, stats.connections, stats.deliveries) == (1, 1, 3)
        assert await reg.presence("room") == {"2": 1}  # it left every group
        await reg.send_group("room", "3")
        await drained(conn, other)
        assert out.closes == [1013] and out.texts == []
        assert other_out.texts == ["0", "1", "2", "3"]


async def test_publishing_returns_the_position_unless_history_is_off_for_the_message() -> None:
    async with Registry(history=HistoryLimits()) as reg:
        conn, out = await tab(reg, 1)
        await reg.join(conn, "room")
        kept = await reg.send_group("room", "kept")
        assert await reg.send_group("room", "presence", history=False) is None
        again = await reg.send_group("room", "kept too")
        assert kept is not None and again == Position(kept.epoch, 2) and kept.offset == 1
        top, newest = await reg.recent("g:room", 10)
        assert top == again and [e.frame.payload for e in newest] == ["kept", "kept too"]
        direct = await reg.send_user(1, "direct")
        assert direct is not None and direct.offset == 1
        assert await reg.send_user(1, "typing", history=False) is None
        everyone = await reg.broadcast("all")
        assert everyone is not None and everyone.offset == 1
        assert await reg.broadcast("ping", history=False) is None
        assert [e.frame.payload for e in (await reg.recent("u:1", 10))[1]] == ["direct"]
        assert [e.frame.payload for e in (await reg.recent("*", 10))[1]] == ["all"]
        await drained(conn)
        assert out.texts == ["kept", "presence", "kept too", "direct", "typing", "all", "ping"]


async def test_history_for_narrows_history_to_some_channels() -> None:
    async with Registry(history=HistoryLimits(), history_for=lambda ch: ch != "*") as reg:
        assert reg.keeps_history("g:room") and reg.keeps_history("u:1")
        assert not reg.keeps_history("*")
        conn, out = await tab(reg, 1)
        position = await reg.send_user(1, "direct")
        assert position is not None and position.offset == 1
        assert await reg.broadcast("all") is None
        assert (await reg.recover("u:1", Position(position.epoch, 0))).recovered
        assert (await reg.recent("u:1", 1))[0] == position
        with pytest.raises(HistoryUnavailable, match=r"channel '\*' keeps no history"):
            await reg.recover("*", Position(position.epoch, 0))
        with pytest.raises(HistoryUnavailable, match=r"channel '\*' keeps no history"):
            await reg.recent("*", 1)
        await drained(conn)
        assert out.texts == ["direct", "all"]


async def test_without_history_nothing_is_kept_or_recovered() -> None:
    async with Registry() as reg:
        assert not reg.keeps_history("g:room") and not reg.keeps_history("*")
        conn, out = await tab(reg, 1)
        await reg.join(conn, "room")
        assert await reg.send_group("room", "x") is None
        with pytest.raises(HistoryUnavailable):
            await reg.recent("g:room", 1)
        with pytest.raises(HistoryUnavailable):
            await reg.recover("g:room", Position("e", 0))
        await drained(conn)
        assert out.texts == ["x"]


async def test_recover_and_recent_answer_from_the_channels_history() -> None:
    async with Registry(history=HistoryLimits(size=10)) as reg:
        positions = [await reg.send_group("room", f"m{i}") for i in range(3)]
        assert all(p is not None for p in positions)
        seen = positions[0]
        assert seen is not None
        answer = await reg.recover("g:room", seen)
        assert answer.recovered and answer.position == positions[2]
        assert [(e.offset, e.frame.payload) for e in answer.entries] == [(2, "m1"), (3, "m2")]
        top, newest = await reg.recent("g:room", 1)
        assert top == positions[2] and [e.frame.payload for e in newest] == ["m2"]


async def test_channels_of_lists_groups_user_and_broadcast() -> None:
    async with Registry() as reg:
        conn, _ = await tab(reg, 7)
        for group in ("b", "a"):
            await reg.join(conn, group)
        anon, _ = await tab(reg)
        assert reg.channels_of(conn) == ["g:a", "g:b", "u:7", "*"]
        assert reg.channels_of(anon) == ["*"]


async def test_an_attachment_given_a_stream_is_a_recoverable_connection() -> None:
    async with Registry() as reg:
        out, stream = Outbox(), Stream(10)
        async with reg.attached(out, SimpleUser(1, "a"), ["room"], stream=stream) as conn:
            stream.release()
            await reg.send_group("room", "hi")
            await drained(conn)
            assert reg.stats().connections == 1
        assert envelopes(out) == [{"type": "ag.message", "channel": "g:room", "data": "hi"}]
        assert reg.stats().connections == 0 and not conn.is_open
