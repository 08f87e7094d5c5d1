"""After a break in Redis nothing is lost silently: missed messages are recovered in place or
the sockets are told, a logout made meanwhile still lands, and a message too large for Redis'
pub/sub buffers is refused at the sender instead of cutting every subscriber."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest

from asgi_groups import HistoryLimits, MessageTooLarge, Registry, SimpleUser
from asgi_groups.stream import Stream
from tests.support.redis import GUARD, Inbox, MakeRegistry, PausableProxy, RedisServer
from tests.support.waiting import wait_until

KEPT = HistoryLimits(size=100)


async def recoverable(registry: Registry, user_id: object, group: str) -> Inbox:
    """A recoverable connection in ``group``, resumed as new (its stream released)."""
    inbox = Inbox()
    stream = Stream(registry.limits.max_messages)
    conn = await registry.connect(inbox, SimpleUser(user_id, f"user{user_id}"), stream=stream)
    await registry.join(conn, group)
    for frame in stream.release():
        conn.deliver(frame)
    return inbox


async def texts(inbox: Inbox, count: int) -> list[tuple[int, str]]:
    """The next ``count`` envelopes as (offset, text)."""
    got = []
    for _ in range(count):
        body = json.loads(await inbox.text())
        assert body["type"] == "ag.message", body
        got.append((body["offset"], body["data"]))
    return got


async def test_a_recoverable_socket_gets_what_it_missed_in_place_after_a_silent_partition(
    make: MakeRegistry, redis_server: RedisServer
) -> None:
    proxy = PausableProxy(redis_server.port)
    await proxy.start()
    try:
        deaf = await make(proxy.url, history=KEPT)
        speaker = await make(history=KEPT)
        inbox = await recoverable(deaf, 1, "room")
        await speaker.send_group("room", "m0")
        assert await texts(inbox, 1) == [(1, "m0")]

        proxy.pause()
        for n in range(1, 6):  # the deaf process hears none of these live
            await speaker.send_group("room", f"m{n}")
        await wait_until(lambda: deaf.stats().backend["down"], timeout=GUARD)
        told = json.loads(await inbox.text())  # at once, while the break lasts
        assert (told["type"], told["error"]) == ("ag.error", "interrupted"), told
        proxy.resume()
        await wait_until(lambda: deaf.stats().missed_recovered == 1, timeout=GUARD)
        await speaker.send_group("room", "m6")

        # in order, none twice, the socket never closed, nothing to tell
        assert await texts(inbox, 6) == [(n + 1, f"m{n}") for n in range(1, 7)]
        assert inbox.empty()
        assert deaf.stats().missed_told == 0 and deaf.connections(1)[0].is_open
    finally:
        await proxy.close()


async def test_a_recoverable_socket_whose_history_died_with_redis_is_closed_to_resume(
    make: MakeRegistry, redis_server: RedisServer
) -> None:
    """Redis restarted empty: what was missed cannot be given back in place, so the socket is
    closed with 1013 and its client resumes (its welcome then says "epoch changed")."""
    a = await make(history=KEPT)
    inbox = await recoverable(a, 1, "room")
    await a.send_group("room", "m0")
    assert await texts(inbox, 1) == [(1, "m0")]
    redis_server.kill()
    try:
        told = json.loads(await inbox.text(timeout=GUARD))
        assert told["error"] == "interrupted"
    finally:
        redis_server.restart()
    closed = await inbox.next(timeout=GUARD)
    assert (closed["type"], closed["code"]) == ("websocket.close", 1013), closed
    assert "history" in closed["reason"]
    await wait_until(lambda: a.stats().breaks == 1)
    assert a.stats().missed_recovered == 0 and a.stats().missed_told == 1


async def test_a_socket_without_history_is_told_it_may_have_missed_messages(
    make: MakeRegistry, redis_server: RedisServer
) -> None:
    """The default telling is a 1013 close: clients reconnect, reload and resume."""
    a = await make()
    inbox = Inbox()
    conn = await a.connect(inbox, SimpleUser(1, "one"))
    with redis_server.client() as raw:
        raw.client_kill_filter(_type="pubsub")
    closed = await inbox.next(timeout=GUARD)  # as soon as the break is noticed
    assert (closed["type"], closed["code"]) == ("websocket.close", 1013)
    assert "missed" in closed["reason"] and not conn.is_open
    await wait_until(lambda: a.stats().breaks == 1)
    assert a.stats().missed_told == 1  # once: not again when the break ends


async def test_a_logout_reaches_a_partitioned_process_when_it_heals(
    make: MakeRegistry, redis_server: RedisServer
) -> None:
    proxy = PausableProxy(redis_server.port)
    await proxy.start()
    try:
        deaf = await make(proxy.url)
        other = await make()
        inbox = Inbox()
        conn = await deaf.connect(inbox, SimpleUser(7, "seven"))
        deaf.on_missed(conn, lambda *_: None)  # an app that keeps sockets open through breaks
        proxy.pause()
        await wait_until(lambda: deaf.stats().backend["down"], timeout=GUARD)
        await other.disconnect_user(7)  # published while the deaf process cannot hear it
        proxy.resume()
        closed = await inbox.next(timeout=GUARD)
        assert (closed["type"], closed["code"]) == ("websocket.close", 4401), closed
        assert deaf.connections(7) == []
    finally:
        await proxy.close()


async def test_a_logout_with_redis_down_closes_here_at_once_and_there_when_it_is_back(
    make: MakeRegistry, redis_server: RedisServer
) -> None:
    here, there = await make(), await make()
    inbox_here, inbox_there = Inbox(), Inbox()
    for registry, inbox in ((here, inbox_here), (there, inbox_there)):
        conn = await registry.connect(inbox, SimpleUser(7, "seven"))
        registry.on_missed(conn, lambda *_: None)  # keeps sockets open through breaks
    redis_server.kill()
    try:
        await wait_until(lambda: here.stats().backend["down"] and there.stats().backend["down"])
        await here.disconnect_user(7)  # does not raise
        assert await inbox_here.close_code(timeout=0.5) == 4401  # at once, Redis or not
        assert inbox_there.empty()
    finally:
        redis_server.restart()
    assert await inbox_there.close_code(timeout=GUARD) == 4401


async def test_of_two_logouts_sent_late_the_later_one_is_kept(make: MakeRegistry) -> None:
    """Two processes that logged a user out during an outage send their revocations when it
    ends, in either order: the one kept for processes that missed both is the later one, which
    also closes that user's sockets opened between the two."""
    registry = await make()
    backend = registry.backend
    later = {"user_id": "7", "at": 2_000.0, "origin": "b", "code": 4401}
    earlier = {"user_id": "7", "at": 1_000.0, "origin": "a", "code": 4401}
    await backend.control("disconnect_user", later)
    await backend.control("disconnect_user", earlier)  # the late sender of the earlier logout
    assert (await backend.revocations(["7"]))["7"]["at"] == 2_000.0
    await backend.control("disconnect_user", {**later, "at": 3_000.0})
    assert (await backend.revocations(["7"]))["7"]["at"] == 3_000.0


@pytest.fixture
def small_pubsub_buffers(redis_server: RedisServer) -> Iterator[None]:
    """``client-output-buffer-limit pubsub 64kb 32kb 5`` for one test, restored after it."""
    with redis_server.client() as raw:
        before = raw.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
        raw.config_set("client-output-buffer-limit", "pubsub 64kb 32kb 5")
    try:
        yield
    finally:
        with redis_server.client() as raw:
            raw.config_set("client-output-buffer-limit", before)


@pytest.mark.usefixtures("small_pubsub_buffers")
async def test_a_publish_too_large_for_redis_pubsub_buffers_is_refused_at_the_sender(
    make: MakeRegistry,
) -> None:
    subscriber, publisher = await make(), await make(listen=False)
    inbox = Inbox()
    conn = await subscriber.connect(inbox, SimpleUser(1, "one"))
    await subscriber.join(conn, "room")
    big = "x" * 100_000  # under the registry's 1 MiB limit, over what Redis carries here
    for _ in range(10):
        with pytest.raises(MessageTooLarge, match="client-output-buffer-limit"):
            await publisher.send_group("room", big)
    await publisher.send_group("room", "small")
    assert await inbox.text() == "small"
    assert subscriber.stats().breaks == 0 and conn.is_open  # nobody was cut off


@pytest.mark.usefixtures("small_pubsub_buffers")
async def test_a_subscriber_cut_by_redis_buffer_limit_is_logged_with_the_setting(
    make: MakeRegistry, redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "asgi_groups.redis")
    subscriber = await make()
    inbox = Inbox()
    conn = await subscriber.connect(inbox, SimpleUser(1, "one"))
    await subscriber.join(conn, "room")
    with redis_server.client() as raw:  # a publisher that knows nothing of the limit
        raw.publish(f"{prefix}:g:room", b"x" * 100_000)
    await wait_until(lambda: subscriber.stats().breaks == 1, timeout=GUARD)
    said = [r.getMessage() for r in caplog.records]
    assert any("Redis closed it" in line and "output-buffer" in line for line in said), said
    assert any("client-output-buffer-limit pubsub 65536 32768 5" in line for line in said)
    assert (await inbox.next())["code"] == 1013  # and the socket was told


class Refusing:
    """Where Redis was: a port that accepts connections, counts them and closes them at once."""

    def __init__(self) -> None:
        self.attempts = 0
        self.server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._refuse, "127.0.0.1", port)

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.attempts += 1
        writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_while_redis_refuses_a_process_retries_a_few_times_a_second_not_in_a_loop(
    make: MakeRegistry, redis_server: RedisServer
) -> None:
    a = await make()
    redis_server.kill()
    refusing = Refusing()
    try:
        await wait_until(lambda: a.stats().backend["down"])
        await refusing.start(redis_server.port)
        await wait_until(lambda: refusing.attempts >= 3, timeout=GUARD)  # it keeps trying ...
        started, seen = asyncio.get_running_loop().time(), refusing.attempts
        await wait_until(lambda: refusing.attempts >= seen + 8, timeout=GUARD)
        rate = (refusing.attempts - seen) / (asyncio.get_running_loop().time() - started)
        assert rate < 20, f"{rate:.0f} connection attempts per second"  # ... but not in a loop
    finally:
        await refusing.close()
        redis_server.restart()
    await wait_until(lambda: not a.stats().backend["down"], timeout=GUARD)
