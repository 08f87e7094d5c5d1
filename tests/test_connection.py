"""A Connection on its own: deliver() outcomes and the one closed callback, with no registry."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from asgi_groups import Connection, ConnectionClosed, QueueLimits, SimpleUser
from asgi_groups.connection import DELIVERED, FAILED, NOT_OPEN, OVERFLOWED
from asgi_groups.frames import Frame

from .fakes import Outbox, owner_task


def closed_log() -> tuple[list[Connection], Any]:
    calls: list[Connection] = []
    return calls, calls.append


async def test_outcomes_written_queued_and_not_open() -> None:
    out = Outbox()
    calls, on_closed = closed_log()
    conn = Connection(out, SimpleUser(1, "a"), on_closed=on_closed)
    assert conn.user_id == "1"
    assert conn.deliver(Frame.text("a")) == DELIVERED
    out.gate.clear()
    assert conn.deliver(Frame.text("b")) == DELIVERED  # waits in send: handed to a writer
    assert conn.deliver(Frame.text("c")) == DELIVERED  # queued behind it
    assert conn.queued == (1, 1)
    conn.close(4000)
    assert calls == [conn]  # told at once: it leaves every group before the close frame
    assert conn.deliver(Frame.text("d")) == NOT_OPEN
    out.gate.set()
    await conn.wait_closed()
    assert out.texts == ["a", "b", "c"] and out.closes == [4000]
    conn.finish()
    assert calls == [conn]  # at most one callback


async def test_overflow_is_an_outcome_not_a_callback() -> None:
    out = Outbox()
    calls, on_closed = closed_log()
    conn = Connection(out, None, limits=QueueLimits(max_messages=2), on_closed=on_closed)
    out.gate.clear()
    outcomes = [conn.deliver(Frame.text(str(i))) for i in range(4)]
    assert outcomes == [DELIVERED, DELIVERED, DELIVERED, OVERFLOWED]
    assert conn.overflowed and not conn.is_open and conn.close_code == 1013
    assert calls == []  # the caller of deliver() acts on the outcome
    conn.finish()
    assert calls == [conn]


async def test_drop_oldest_reports_how_many_were_dropped() -> None:
    out = Outbox()
    conn = Connection(out, None, limits=QueueLimits(max_messages=2, overflow="drop_oldest"))
    out.gate.clear()
    assert [conn.deliver(Frame.text(str(i))) for i in range(3)] == [DELIVERED] * 3
    assert conn.deliver(Frame.text("3")) == 1
    assert conn.deliver(Frame.text("x" * 10)) == 1
    assert conn.dropped == 2 and conn.is_open
    conn.close()  # queued behind what is left
    out.gate.set()
    await conn.wait_closed()
    assert out.texts == ["0", "3", "x" * 10]


async def test_a_send_that_fails_at_once_is_an_outcome() -> None:
    async def gone(event: Any) -> None:
        raise OSError("connection reset")

    calls, on_closed = closed_log()
    conn = Connection(gone, None, on_closed=on_closed)
    assert conn.deliver(Frame.text("x")) == FAILED
    assert not conn.is_open and calls == []
    assert conn.deliver(Frame.text("y")) == NOT_OPEN


async def test_a_send_that_fails_later_calls_back_once() -> None:
    failing = asyncio.Event()

    async def send(event: Any) -> None:
        await failing.wait()
        raise OSError("connection reset")

    calls, on_closed = closed_log()
    conn = Connection(send, None, on_closed=on_closed)
    assert conn.deliver(Frame.text("x")) == DELIVERED
    assert conn.deliver(Frame.text("y")) == DELIVERED
    failing.set()
    await conn.wait_closed()
    assert calls == [conn] and not conn.is_open
    conn.finish()
    assert calls == [conn]


async def test_direct_send_reports_a_closed_connection() -> None:
    out = Outbox()
    calls, on_closed = closed_log()
    conn = Connection(out, None, limits=QueueLimits(max_messages=1), on_closed=on_closed)
    out.gate.clear()
    await conn.send("a")
    await conn.send("b")
    with pytest.raises(ConnectionClosed):
        await conn.send("c")  # overflow: closing with 1013
    assert calls == [conn] and conn.overflowed  # no registry loop to act on it: told here
    with pytest.raises(ConnectionClosed):
        await conn.send("d")
    assert calls == [conn]


async def test_abort_discards_the_queue_and_closes_now() -> None:
    out = Outbox()
    calls, on_closed = closed_log()
    conn = Connection(out, None, on_closed=on_closed)
    out.gate.clear()
    for text in "abc":
        conn.deliver(Frame.text(text))
    conn.abort(4403, "revoked")
    assert calls == [conn] and conn.queued == (0, 0)
    out.gate.set()
    await conn.wait_closed()
    assert out.closes == [4403]
    assert "b" not in out.texts and "c" not in out.texts


async def test_a_close_that_never_completes_tears_the_owner_down() -> None:
    stuck = asyncio.Event()

    async def send(event: Any) -> None:
        await stuck.wait()  # a client that never reads: nothing is ever written

    task, cancelled = owner_task()
    conn = Connection(send, None, limits=QueueLimits(close_timeout=0.01), owner=task)
    conn.close()
    await cancelled.wait()
    assert conn.killed


async def test_drained_waits_until_every_queued_frame_was_written() -> None:
    written: list[str] = []

    async def send(event: Any) -> None:
        await asyncio.sleep(0)  # a transport that takes a turn of the loop per frame
        written.append(event["text"])

    conn = Connection(send, None)
    for text in "abc":
        assert conn.deliver(Frame.text(text)) == DELIVERED
    assert written == []
    await conn.drained()
    assert written == ["a", "b", "c"] and conn.queued == (0, 0)
    await conn.drained()  # nothing queued: returns at once
    conn.deliver(Frame.text("d"))
    await conn.drained()
    assert written == ["a", "b", "c", "d"]


async def test_overflow_closes_a_slow_reader_with_1013_and_discards_its_queue() -> None:
    out = Outbox()
    calls, on_closed = closed_log()
    conn = Connection(out, None, on_closed=on_closed)
    out.gate.clear()  # the client stopped reading
    for text in "abc":
        conn.deliver(Frame.text(text))
    assert conn.overflow() == OVERFLOWED  # what the registry does to a resume held too long
    assert conn.overflowed and not conn.is_open and conn.close_code == 1013
    assert conn.queued == (0, 0) and calls == []  # the caller acts on the outcome
    assert conn.overflow() == NOT_OPEN
    out.gate.set()
    await conn.drained()  # closing: nothing more will be written but the close frame
    await conn.wait_closed()
    assert out.closes == [1013] and "c" not in out.texts
