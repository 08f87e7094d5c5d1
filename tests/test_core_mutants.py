"""Fixed-input tests for the details of the core that mutation testing found unguarded.

Each test states a rule a user of the library can observe: what a connection writes and when,
the exact bounds of its queue, the close frames it sends, frame sizes, limit validation, channel
names and the eager-send contract. See docs/CONTRIBUTING.md, "Mutation testing".
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

import pytest
from pydantic import BaseModel, Field

from asgi_groups import Connection, ConnectionClosed, QueueLimits, SimpleUser, eager
from asgi_groups.channels import MAX_GROUP_NAME, group_channel, user_channel, user_key
from asgi_groups.connection import DELIVERED, NOT_OPEN, OVERFLOWED
from asgi_groups.frames import Frame, encode, encode_json

from .fakes import Outbox, owner_task


class Stuck:
    """An ASGI ``send`` that never completes; records what it was given and when it is stopped
    (cancelled, or closed)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.stopped = asyncio.Event()

    async def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            self.stopped.set()


def close_events(out: Outbox) -> list[tuple[int, str]]:
    return [(e["code"], e["reason"]) for e in out.events if e["type"] == "websocket.close"]


# -- a fresh connection ------------------------------------------------------------------------


async def test_a_fresh_connection_is_open_with_nothing_to_report() -> None:
    conn = Connection(Outbox(), SimpleUser(1, "a"))
    assert conn.is_open
    assert conn.close_code is None
    assert conn.overflowed is False
    assert conn.killed is False
    assert conn.dropped == 0
    assert conn.queued == (0, 0)
    assert repr(conn) == f"<Connection {conn.id[:8]} user='1' open>"


async def test_only_an_authenticated_user_gets_a_user_id() -> None:
    anonymous = SimpleUser(1, "a", is_authenticated=False)
    assert Connection(Outbox(), anonymous).user_id is None
    assert Connection(Outbox(), None).user_id is None
    assert Connection(Outbox(), SimpleUser(7, "b")).user_id == "7"


# -- the queue's bounds ------------------------------------------------------------------------


async def test_max_bytes_is_an_inclusive_bound() -> None:
    """``max_bytes`` bytes may wait; one more byte overflows."""
    out = Outbox()
    out.gate.clear()
    conn = Connection(out, None, limits=QueueLimits(max_bytes=10))
    assert conn.deliver(Frame.text("now")) == DELIVERED  # in send, not queued
    assert conn.deliver(Frame.text("x" * 5)) == DELIVERED
    assert conn.deliver(Frame.text("y" * 5)) == DELIVERED  # exactly 10 bytes wait
    assert conn.queued == (2, 10)
    assert conn.deliver(Frame.text("z")) == OVERFLOWED
    assert conn.overflowed and conn.close_code == 1013


async def test_a_frame_that_does_not_fit_in_max_bytes_overflows() -> None:
    out = Outbox()
    out.gate.clear()
    conn = Connection(out, None, limits=QueueLimits(max_bytes=10))
    conn.deliver(Frame.text("now"))
    assert conn.deliver(Frame.text("x" * 5)) == DELIVERED
    assert conn.deliver(Frame.text("y" * 6)) == OVERFLOWED


async def test_overflow_closes_with_1013_and_says_why() -> None:
    out = Outbox()
    out.gate.clear()
    conn = Connection(out, None, limits=QueueLimits(max_messages=1))
    conn.deliver(Frame.text("now"))
    conn.deliver(Frame.text("queued"))
    assert conn.deliver(Frame.text("over")) == OVERFLOWED
    assert conn.queued == (0, 0)  # what waited is discarded
    out.gate.set()
    await conn.wait_closed()
    assert close_events(out) == [(1013, "slow reader")]
    assert "queued" not in out.texts


async def test_drop_oldest_drops_just_enough_bytes() -> None:
    out = Outbox()
    out.gate.clear()
    limits = QueueLimits(max_bytes=10, overflow="drop_oldest")
    conn = Connection(out, None, limits=limits)
    conn.deliver(Frame.text("now"))
    conn.deliver(Frame.text("a" * 4))
    conn.deliver(Frame.text("b" * 6))
    assert conn.deliver(Frame.text("c" * 4)) == 1  # dropping the 4 leaves exactly 10
    assert conn.queued == (2, 10)
    assert conn.deliver(Frame.text("d" * 9)) == 2  # needs both older frames gone
    assert conn.queued == (1, 9)
    assert conn.dropped == 3 and conn.is_open
    out.gate.set()
    conn.close()
    await conn.wait_closed()
    assert out.texts == ["now", "d" * 9]


# -- closing -----------------------------------------------------------------------------------


async def test_close_sends_its_code_and_reason_after_what_is_queued() -> None:
    out = Outbox()
    out.gate.clear()
    conn = Connection(out, None)
    conn.deliver(Frame.text("a"))
    conn.close(4000, "bye")
    assert conn.close_code == 4000 and not conn.is_open
    assert repr(conn).endswith(" closing>")
    out.gate.set()
    await conn.wait_closed()
    assert out.texts == ["a"]
    assert close_events(out) == [(4000, "bye")]
    assert repr(conn).endswith(" closed>")
    assert conn.deliver(Frame.text("late")) == NOT_OPEN
    assert out.texts == ["a"]


async def test_close_and_abort_default_to_an_empty_reason() -> None:
    closed, aborted = Outbox(), Outbox()
    a = Connection(closed, None)
    a.close()
    b = Connection(aborted, None)
    b.abort()
    await a.wait_closed()
    await b.wait_closed()
    assert close_events(closed) == [(1000, "")]
    assert close_events(aborted) == [(1013, "")]


async def test_abort_sends_its_reason_and_nothing_more_is_written() -> None:
    out = Outbox()
    conn = Connection(out, None)
    conn.abort(4403, "revoked")
    await conn.wait_closed()
    assert close_events(out) == [(4403, "revoked")]
    assert repr(conn).endswith(" closed>")
    assert conn.deliver(Frame.text("late")) == NOT_OPEN
    assert out.texts == []


async def test_an_empty_text_frame_is_a_message_not_a_close() -> None:
    out = Outbox()
    out.gate.clear()
    conn = Connection(out, None)
    for text in ("a", "", "b"):
        assert conn.deliver(Frame.text(text)) == DELIVERED
    out.gate.set()
    conn.close()
    await conn.wait_closed()
    assert out.texts == ["a", "", "b"]
    assert out.closes == [1000]


async def test_send_to_a_closed_connection_says_so() -> None:
    conn = Connection(Outbox(), None)
    conn.close()
    with pytest.raises(ConnectionClosed, match=f"connection {conn.id} is closed"):
        await conn.send("x")


async def test_finish_stops_everything() -> None:
    send = Stuck()
    calls: list[Connection] = []
    conn = Connection(send, None, on_closed=calls.append)
    conn.deliver(Frame.text("a"))  # waits in send: a writer owns it
    conn.deliver(Frame.text("b"))
    conn.finish()
    await send.stopped.wait()  # the writer was cancelled, the send with it
    assert conn.queued == (0, 0)
    assert not conn.is_open and calls == [conn]
    assert conn.deliver(Frame.text("c")) == NOT_OPEN
    assert send.events == [{"type": "websocket.send", "text": "a"}]
    await conn.wait_closed()  # nothing left to wait for


async def test_a_failed_transport_leaves_nothing_queued() -> None:
    fail = asyncio.Event()

    async def send(event: Any) -> None:
        await fail.wait()
        raise OSError("reset")

    calls: list[Connection] = []
    conn = Connection(send, None, on_closed=calls.append)
    for text in "abc":
        conn.deliver(Frame.text(text))
    assert conn.queued == (2, 2)
    fail.set()
    await conn.wait_closed()
    assert calls == [conn]
    assert conn.queued == (0, 0)


async def test_wait_closed_gives_up_after_close_timeout() -> None:
    """A writer stuck in ``send`` does not hold ``wait_closed`` past ``close_timeout``."""
    send = Stuck()
    conn = Connection(send, None, limits=QueueLimits(close_timeout=0.01))
    conn.deliver(Frame.text("a"))
    await conn.wait_closed()  # returns although the send never completes
    assert conn.is_open


async def test_frames_after_a_writer_finished_are_written_too() -> None:
    out = Outbox()
    out.gate.clear()
    conn = Connection(out, None)
    conn.deliver(Frame.text("a"))  # waits in send: a writer takes over
    conn.deliver(Frame.text("b"))
    out.gate.set()
    await conn.wait_closed()  # the writer is done: nothing left to write
    assert out.texts == ["a", "b"]
    out.gate.clear()
    conn.deliver(Frame.text("c"))  # waits in send again: a new writer takes over
    conn.deliver(Frame.text("d"))
    out.gate.set()
    conn.close()
    await conn.wait_closed()
    assert out.texts == ["a", "b", "c", "d"]


# -- tearing down a socket whose close never completes -----------------------------------------


async def test_the_teardown_cancels_the_owner_the_writer_and_no_one_else() -> None:
    send = Stuck()
    task, owner_cancelled = owner_task()
    conn = Connection(send, None, limits=QueueLimits(close_timeout=0.01), owner=task)
    conn.close()
    await owner_cancelled.wait()  # this test's own task is not the owner: it is not cancelled
    await send.stopped.wait()
    assert conn.killed
    conn.finish()  # the owner's cleanup still works after a teardown
    assert not conn.is_open


async def test_the_owner_defaults_to_the_task_that_made_the_connection() -> None:
    send = Stuck()
    made = asyncio.Event()
    cancelled = asyncio.Event()
    conns: list[Connection] = []

    async def serve() -> None:
        conns.append(Connection(send, None, limits=QueueLimits(close_timeout=0.01)))
        made.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.get_running_loop().create_task(serve())
    await made.wait()
    conns[0].close()
    await cancelled.wait()
    assert conns[0].killed
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_finished_owner_is_not_reported_killed() -> None:
    send = Stuck()

    async def owner() -> None:
        return None

    task = asyncio.get_running_loop().create_task(owner())
    await task
    conn = Connection(send, None, limits=QueueLimits(close_timeout=0.01), owner=task)
    conn.close()
    await send.stopped.wait()  # the teardown ran: it cancelled the stuck writer
    assert not conn.killed


# -- coalescing --------------------------------------------------------------------------------


async def test_coalesce_joins_up_to_its_limit_of_text_frames() -> None:
    out = Outbox()
    out.gate.clear()
    conn = Connection(out, None, limits=QueueLimits(coalesce=2))
    for text in "abcde":
        conn.deliver(Frame.text(text))
    out.gate.set()
    conn.close()
    await conn.wait_closed()
    assert out.texts == ["a\nb", "c\nd", "e"]


async def test_coalesce_leaves_binary_frames_alone() -> None:
    out = Outbox()
    out.gate.clear()
    conn = Connection(out, None, limits=QueueLimits(coalesce=3))
    for data in (b"1", b"2", b"3"):
        conn.deliver(Frame.binary(data))
    conn.deliver(Frame.text("t"))
    out.gate.set()
    conn.close()
    await conn.wait_closed()
    assert [e.get("bytes") for e in out.events if "bytes" in e] == [b"1", b"2", b"3"]
    assert out.texts == ["t"]
    assert conn.queued == (0, 0)


# -- frames ------------------------------------------------------------------------------------


def test_frame_sizes_are_utf8_bytes() -> None:
    assert Frame.text("hi").size == 2
    assert Frame.text("é").size == 2
    assert Frame.text("😀").size == 4
    assert Frame.text("\ud800").size == 3  # a lone surrogate, as surrogatepass encodes it
    assert Frame.binary(b"\x00\x01").size == 2


def test_frame_repr_says_kind_and_size() -> None:
    assert repr(Frame.text("hé")) == "<Frame text 3B>"
    assert repr(Frame.binary(b"abc")) == "<Frame binary 3B>"


def test_a_pydantic_model_encodes_as_model_dump_json_does() -> None:
    class Model(BaseModel):
        name: str = Field(serialization_alias="Name")

    model = Model(name="x")
    assert encode(model).payload == model.model_dump_json() == '{"name":"x"}'
    assert encode_json("é").payload == '"é"'


# -- limits and channel names ------------------------------------------------------------------


def test_queue_limits_accept_their_smallest_values() -> None:
    limits = QueueLimits(max_messages=1, max_bytes=1, coalesce=1, close_timeout=0.001)
    assert (limits.max_messages, limits.max_bytes) == (1, 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_messages": 0}, "queue limits must be positive"),
        ({"max_bytes": 0}, "queue limits must be positive"),
        ({"overflow": "block"}, "unknown overflow policy 'block'"),
        ({"coalesce": 0}, "coalesce must be at least 1"),
        ({"close_timeout": 0}, "close_timeout must be positive"),
        ({"close_timeout": -1.0}, "close_timeout must be positive"),
    ],
)
def test_queue_limits_refuse_bad_values_saying_which(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        QueueLimits(**options)


def test_channel_errors_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=f"non-empty strings of at most {MAX_GROUP_NAME} chars"):
        group_channel("")
    with pytest.raises(ValueError, match=r"^user_id is required$"):
        user_key(None)
    with pytest.raises(ValueError, match=r"^user_id is required$"):
        user_channel(None)


# -- the eager start of a send -----------------------------------------------------------------


class Handshake:
    """An awaitable that yields ``"first"`` and returns whatever its driver sends back."""

    def __await__(self) -> Generator[str, Any, Any]:
        value = yield "first"
        return value


def test_a_resumed_send_passes_the_drivers_values_through() -> None:
    """Driven by hand, a resumed coroutine sees exactly what it would have seen unstarted."""

    async def send() -> Any:
        return await Handshake()

    rest = eager.start(send())
    assert isinstance(rest, eager.Resumed)
    steps = rest.__await__()
    assert steps.send(None) == "first"
    with pytest.raises(StopIteration) as stop:
        steps.send("reply")
    assert stop.value.value == "reply"


class Catching:
    """An awaitable that yields ``"first"`` and returns what is thrown into it, as text."""

    def __await__(self) -> Generator[str, Any, Any]:
        try:
            yield "first"
        except ValueError as exc:
            return f"caught {exc}"
        return "not thrown"


def test_a_resumed_send_receives_what_is_thrown_into_it() -> None:
    async def send() -> Any:
        return await Catching()

    rest = eager.start(send())
    assert isinstance(rest, eager.Resumed)
    steps = rest.__await__()
    assert steps.send(None) == "first"
    with pytest.raises(StopIteration) as stop:
        steps.throw(ValueError("x"))
    assert stop.value.value == "caught x"


async def test_a_send_that_waits_again_while_being_cancelled_finishes_its_cleanup() -> None:
    gate = asyncio.get_running_loop().create_future()
    cleanup = asyncio.get_running_loop().create_future()
    steps: list[str] = []
    cancelled = asyncio.Event()

    async def send() -> None:
        try:
            await gate
        except asyncio.CancelledError:
            steps.append("cancelled")
            cancelled.set()
            await cleanup  # waits again, on another future, before giving up
            steps.append("cleaned up")
            raise

    rest = eager.start(send())
    assert rest is not None
    started = asyncio.Event()

    async def finish() -> None:
        started.set()
        await rest

    task = asyncio.get_running_loop().create_task(finish())
    await started.wait()
    task.cancel()
    await cancelled.wait()
    assert steps == ["cancelled"] and not task.done()
    cleanup.set_result(None)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == ["cancelled", "cleaned up"]


async def test_a_send_taken_over_by_a_writer_is_cancelled_when_the_connection_finishes() -> None:
    seen: list[str] = []

    async def send(event: Any) -> None:
        try:
            await asyncio.get_running_loop().create_future()
        except BaseException as exc:
            seen.append(type(exc).__name__)
            raise

    conn = Connection(send, None)
    conn.deliver(Frame.text("a"))  # waits in send: a writer task takes it over
    conn.finish()  # before that task ran once
    for _ in range(3):
        await asyncio.sleep(0)
    assert seen == ["CancelledError"]
