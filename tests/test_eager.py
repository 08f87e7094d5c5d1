"""The eager start of an ASGI send: its written contract, checked case by case."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from asgi_groups import eager


async def test_a_send_that_does_not_wait_runs_in_the_caller_and_returns_none() -> None:
    seen: list[asyncio.Task[Any] | None] = []

    async def send() -> None:
        seen.append(asyncio.current_task())

    assert eager.start(send()) is None
    assert seen == [asyncio.current_task()]


async def test_a_send_that_raises_before_waiting_raises_in_the_caller() -> None:
    async def send() -> None:
        raise OSError("reset")

    with pytest.raises(OSError, match="reset"):
        eager.start(send())


async def test_a_waiting_send_is_finished_by_a_task_with_its_value_and_errors() -> None:
    gate = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def send() -> str:
        steps.append("before")
        value = await gate
        steps.append("after")
        return f"sent {value}"

    rest = eager.start(send())
    assert rest is not None and steps == ["before"]
    task = asyncio.get_running_loop().create_task(_await(rest))
    await asyncio.sleep(0)
    assert not task.done()  # the task waits on the very future the send waits on
    gate.set_result("x")
    assert await task == "sent x" and steps == ["before", "after"]


async def test_cancelling_the_task_cancels_the_send() -> None:
    cancelled = asyncio.Event()

    async def send() -> None:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    rest = eager.start(send())
    assert rest is not None
    started = asyncio.Event()
    task = asyncio.get_running_loop().create_task(_await(rest, started))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()


async def test_a_future_is_returned_as_it_is() -> None:
    future = asyncio.get_running_loop().create_future()
    assert eager.start(future) is future


async def _await(awaitable: Any, started: asyncio.Event | None = None) -> Any:
    if started is not None:
        started.set()
    return await awaitable


async def test_cancel_reaches_a_send_no_task_drove() -> None:
    """A writer cancelled before its first step never awaits the send: cancel() cancels it."""
    seen: list[str] = []

    async def send() -> None:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    rest = eager.start(send())
    assert isinstance(rest, eager.Resumed)
    rest.cancel()
    assert seen == ["cancelled"]
    rest.cancel()  # once only
    assert seen == ["cancelled"]
    with pytest.raises(RuntimeError, match="driven once"):
        await rest  # a cancelled send cannot be driven any more


async def test_a_driven_send_is_not_cancelled_again_and_is_driven_once() -> None:
    seen: list[str] = []
    gate = asyncio.get_running_loop().create_future()

    async def send() -> str:
        try:
            await gate
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return "sent"

    rest = eager.start(send())
    assert isinstance(rest, eager.Resumed)
    task = asyncio.get_running_loop().create_task(_await(rest))
    gate.set_result(None)
    assert await task == "sent"
    with pytest.raises(RuntimeError, match="driven once"):
        await rest
    rest.cancel()  # what a writer's done callback does: nothing left to cancel
    assert seen == []
