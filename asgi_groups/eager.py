"""Start an ASGI ``send`` in the caller, up to its first wait, as an eager task would.

Most sends to an idle socket complete without waiting (the server writes to its transport and
returns). Running that first step in place costs one coroutine step instead of a task, a loop
turn and a context switch. Only a send that has to wait is handed to a task.

The contract of :func:`start`:

* it runs in the caller's context (``asyncio.current_task()`` is the caller's, or ``None``);
* a coroutine that finishes without waiting returns ``None``; one that raises before waiting
  raises here, in the caller;
* a coroutine that waits returns :class:`Resumed`: a task awaiting it receives the very value
  the coroutine yielded (the future it waits on), so the task waits exactly as if it had started
  the coroutine itself, and the task's cancellation is thrown into the coroutine;
* any other awaitable (a Future) cannot be stepped and is returned as it is;
* a task that is cancelled before its first step never reaches the send: call
  :meth:`Resumed.cancel` (e.g. from the task's done callback) to cancel it all the same.
"""

from __future__ import annotations

from asyncio import CancelledError
from collections.abc import Awaitable, Coroutine, Generator
from types import CoroutineType
from typing import Any

__all__ = ["Resumed", "start"]

_DONE = object()
_DRIVEN = object()  # Resumed: a task has taken the send over (or it was cancelled)


def start(awaitable: Awaitable[Any]) -> Awaitable[Any] | None:
    """Run ``awaitable`` up to its first wait; ``None`` if it finished, else what to await."""
    if type(awaitable) is not CoroutineType and not isinstance(awaitable, Coroutine):
        return awaitable
    # next() with a default: a coroutine that returns None ends without a StopIteration
    # being raised and caught, which is most of the cost of a step taken with send(None)
    waiting = next(awaitable.__await__(), _DONE)
    if waiting is _DONE:
        return None
    return Resumed(awaitable, waiting)


class Resumed:
    """A coroutine already run up to a wait (it yielded ``waiting``), awaitable again."""

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting

    def cancel(self) -> None:
        """Cancel the send if no task has driven it: a task cancelled before its first step
        never throws the cancellation into what it was to await."""
        if self._waiting is _DRIVEN:
            return
        self._waiting = _DRIVEN
        try:
            self._coro.throw(CancelledError())
        except (StopIteration, CancelledError, Exception):
            pass  # cancelled as asked, or it ended some other way: nothing is left to drive
        finally:
            self._coro.close()

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, waiting = self._coro, self._waiting
        if waiting is _DRIVEN:
            raise RuntimeError("a started send is driven once")
        self._waiting = _DRIVEN
        while True:
            try:
                value = yield waiting
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    waiting = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    waiting = coro.send(value)
                except StopIteration as stop:
                    return stop.value
