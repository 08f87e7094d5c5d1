"""A break in the backend, driven by hand through the registry's sink: no Redis, no timing.

``DeafBackend`` keeps history like the memory backend but can stop delivering to its own
process, as a process cut off from Redis does while the others go on publishing.
"""

from __future__ import annotations

import json
from typing import Any

from asgi_groups import HistoryLimits, Registry, SimpleUser
from asgi_groups.backends.memory import MemoryBackend
from asgi_groups.frames import Frame
from asgi_groups.history import Position
from asgi_groups.stream import Stream
from tests.support.redis import Inbox
from tests.support.waiting import wait_until


class DeafBackend(MemoryBackend):
    """History as the memory backend keeps it; while ``deaf``, nothing reaches this process."""

    deaf = False

    async def publish(
        self, channel: str, frame: Frame, exclude: str | None, history: bool = False
    ) -> Position | None:
        if not self.deaf:
            return await super().publish(channel, frame, exclude, history)
        assert self._history is not None and history
        return self._history.append(channel, frame, self.clock())


async def started() -> tuple[Registry, DeafBackend]:
    backend = DeafBackend()
    registry = Registry(backend=backend, history=HistoryLimits())
    await registry.start()
    return registry, backend


async def recoverable(registry: Registry, inbox: Inbox) -> None:
    stream = Stream(registry.limits.max_messages)
    conn = await registry.connect(inbox, SimpleUser(1, "one"), stream=stream)
    await registry.join(conn, "room")
    for frame in stream.release():
        conn.deliver(frame)


async def frames(inbox: Inbox, count: int) -> list[Any]:
    """The next ``count`` frames: message texts, or the error code of a protocol error."""
    got = []
    for _ in range(count):
        body = json.loads(await inbox.text())
        got.append(body["data"] if body["type"] == "ag.message" else body["error"])
    return got


async def test_a_live_message_after_the_break_waits_for_the_replay_of_the_gap() -> None:
    """The repair runs as a task after the backend is back; a live message that arrives
    before it must not pass the gap (nor move the position past it)."""
    registry, backend = await started()
    async with registry:
        inbox = Inbox()
        await recoverable(registry, inbox)
        await registry.send_group("room", "m1")
        assert await frames(inbox, 1) == ["m1"]

        backend.deaf = True
        backend.sink.interrupted("cut")  # told at once
        assert await frames(inbox, 1) == ["interrupted"]
        await registry.send_group("room", "m2")  # published elsewhere: this process misses it
        await registry.send_group("room", "m3")
        backend.deaf = False
        backend.sink.resumed("cut", 0.0)  # the repair is scheduled, not run yet ...
        await registry.send_group("room", "m4")  # ... and a live message comes first

        await wait_until(lambda: registry.stats().missed_recovered == 1)
        assert await frames(inbox, 3) == ["m2", "m3", "m4"]
        assert inbox.empty()
        assert registry.stats().breaks == 1 and registry.stats().missed_told == 0


async def test_a_plain_socket_is_told_once_and_one_opened_in_the_break_when_it_ends() -> None:
    registry, backend = await started()
    async with registry:
        before, during = Inbox(), Inbox()
        await registry.connect(before, SimpleUser(1, "one"))
        backend.sink.interrupted("cut")
        assert await before.close_code() == 1013  # the default telling
        await registry.connect(during, SimpleUser(2, "two"))
        assert during.empty()
        backend.sink.resumed("cut", 0.0)
        assert await during.close_code() == 1013
        await wait_until(lambda: registry.stats().breaks == 1)
        assert registry.stats().missed_told == 2


async def test_an_on_missed_handler_replaces_the_close() -> None:
    registry, backend = await started()
    async with registry:
        inbox = Inbox()
        conn = await registry.connect(inbox, SimpleUser(1, "one"))
        causes: list[str] = []
        registry.on_missed(conn, lambda c, cause: causes.append(cause))
        backend.sink.interrupted("cut")
        backend.sink.resumed("cut", 0.0)
        await wait_until(lambda: registry.stats().breaks == 1)
        assert causes == ["cut"] and conn.is_open and inbox.empty()
