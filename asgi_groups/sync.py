"""Blocking access to a :class:`~asgi_groups.Registry` from sync code (WSGI views, threads, jobs).

``registry.sync.send_group("boys", "hi")`` runs the coroutine on the loop the registry was
started on, when that loop runs in another thread (a server's loop, seen from a worker thread
or an asgiref ``sync_to_async`` thread). With no such loop, as in a plain script, or when the
loop it ran on has closed, the registry is started on one private background loop thread that
every later call reuses: one connection pool, however many calls. A registry stopped by its
``close()`` stays closed here too (``RegistryClosed``) until it is started again.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from . import codes
from .errors import RegistryClosed

if TYPE_CHECKING:
    from .registry import Exclude, Registry

__all__ = ["DEFAULT_SYNC_TIMEOUT", "SyncRegistry"]

T = TypeVar("T")

#: Longest a blocking call waits for the registry's loop to run it.
DEFAULT_SYNC_TIMEOUT = 10.0


class SyncRegistry:
    """Blocking ``send_group`` / ``send_user`` / ``broadcast`` / ``presence`` / remote control.

    Never call it from a thread that runs an event loop (it would block that loop): ``await``
    the registry's methods there. ``timeout`` bounds each call. ``close()`` (or leaving a
    ``with registry.sync:`` block) stops a private loop and the registry it started; it also
    happens at interpreter exit.
    """

    def __init__(self, registry: Registry, *, timeout: float = DEFAULT_SYNC_TIMEOUT) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.registry = registry
        self.timeout = timeout
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._at_exit: Callable[[], None] | None = None

    # -- the API -----------------------------------------------------------------------------

    def send_group(self, group: str, message: Any, *, exclude: Exclude = None) -> None:
        """Send to every connection in ``group``, in every process."""
        self._run(lambda: self.registry.send_group(group, message, exclude=exclude))

    def send_user(self, user_id: object, message: Any, *, exclude: Exclude = None) -> None:
        """Send to every connection of one user, in every process."""
        self._run(lambda: self.registry.send_user(user_id, message, exclude=exclude))

    def broadcast(self, message: Any, *, exclude: Exclude = None) -> None:
        """Send to every connection in every process."""
        self._run(lambda: self.registry.broadcast(message, exclude=exclude))

    def presence(self, group: str) -> dict[str, int]:
        """``{user_id: connections}`` in ``group`` over every process."""
        return self._run(lambda: self.registry.presence(group))

    def disconnect_user(
        self, user_id: object, code: int = codes.UNAUTHORIZED, reason: str = ""
    ) -> None:
        """Close every socket of ``user_id`` in every process."""
        self._run(lambda: self.registry.disconnect_user(user_id, code, reason))

    def join_user(self, user_id: object, group: str) -> None:
        """Put every connection of ``user_id``, in every process, in ``group``."""
        self._run(lambda: self.registry.join_user(user_id, group))

    def leave_user(self, user_id: object, group: str) -> None:
        """Take every connection of ``user_id``, in every process, out of ``group``."""
        self._run(lambda: self.registry.leave_user(user_id, group))

    # -- running coroutines ------------------------------------------------------------------

    def _run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "registry.sync blocks and would stall this event loop: await the Registry's "
                "methods from async code"
            )
        loop = self._target_loop()
        future = asyncio.run_coroutine_threadsafe(make(), loop)
        return self._wait(future)

    def _wait(self, future: concurrent.futures.Future[T]) -> T:
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"the registry did not answer within {self.timeout}s") from None

    def _target_loop(self) -> asyncio.AbstractEventLoop:
        """The registry's own loop if it runs elsewhere, else the private one (started once)."""
        registry = self.registry
        loop = registry.loop
        if registry.started and loop is not None:
            if not loop.is_running():
                raise RegistryClosed("the registry's event loop is not running")
            return loop
        with self._lock:
            if self._loop is None:
                self._start_thread()
            assert self._loop is not None
            if not registry.started:  # never started, or its loop has closed: start it here
                self._wait(asyncio.run_coroutine_threadsafe(registry._ready(), self._loop))
            return self._loop

    def _start_thread(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        thread = threading.Thread(
            target=_run_loop, args=(loop, ready), name="asgi_groups-sync", daemon=True
        )
        thread.start()
        ready.wait()
        self._loop, self._thread = loop, thread
        ref = weakref.ref(self)

        def at_exit() -> None:
            sync = ref()
            if sync is not None:
                sync.close()

        self._at_exit = at_exit
        atexit.register(at_exit)

    @property
    def private_loop(self) -> bool:
        """True when calls run on this object's own background loop thread."""
        return self._loop is not None

    def close(self) -> None:
        """Close the registry this object started, and stop its private loop thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            self._loop = self._thread = None
            if self._at_exit is not None:
                atexit.unregister(self._at_exit)
                self._at_exit = None
            try:
                if self.registry.started and self.registry.loop is loop:
                    self._wait(asyncio.run_coroutine_threadsafe(self.registry.close(), loop))
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(self.timeout)

    def __enter__(self) -> SyncRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "private loop" if self._loop is not None else "registry loop"
        return f"<SyncRegistry {self.registry!r} via {where}>"


def _run_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    """The private loop thread: run until stopped, then cancel leftovers and close the loop."""
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    try:
        loop.run_forever()
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
