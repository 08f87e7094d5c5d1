"""Registry routing, encode-once, bounded queues and stats, without sockets."""

from __future__ import annotations

import asyncio
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
    MessageTooLarge,
    QueueLimits,
    Registry,
    RegistryClosed,
    SimpleUser,
)

from .fakes import Outbox, drained


async def tab(registry: Registry, user_id: int | None = None) -> tuple[Connection, Outbox]:
    out = Outbox()
    user = SimpleUser(user_id, f"user{user_id}") if user_id is not None else None
    return await registry.connect(out, user), out


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


async def test_registry_must_be_started() -> None:
    reg = Registry()
    with pytest.raises(RegistryClosed):
        await reg.broadcast("x")


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
