"""Outages are loud, survived and repaired: killed Redis, killed pub/sub clients, a silent link,
a crashed listener, a SIGKILLed server process."""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Any

import pytest

from asgi_groups import BackendUnavailable, DeliveryUnknown, HistoryLimits, Registry, SimpleUser
from tests.support.redis import (
    GUARD,
    Inbox,
    MakeRegistry,
    PausableProxy,
    RedisServer,
    WsClient,
    child_env,
    eventually,
)
from tests.support.servers import serve_process
from tests.support.waiting import wait_until

APP = "tests.redis_apps.groups_app:app"


class Hooks:
    """Counts on_backend_down / on_backend_up calls (one sync, one async, as apps may pass)."""

    def __init__(self) -> None:
        self.down: list[Exception] = []
        self.up = 0

    def on_down(self, error: Exception) -> None:
        self.down.append(error)

    async def on_up(self) -> None:
        self.up += 1

    def options(self) -> dict[str, Any]:
        return {"on_backend_down": self.on_down, "on_backend_up": self.on_up}


def stats(registry: Registry) -> dict[str, Any]:
    return registry.stats().backend


async def member(registry: Registry, user_id: object, group: str) -> Inbox:
    inbox = Inbox()
    conn = await registry.connect(inbox, SimpleUser(user_id, f"user{user_id}"))
    await registry.join(conn, group)
    return inbox


def told(registry: Registry, user_id: object) -> list[str]:
    """Keep the sockets of ``user_id`` open after a break; returns the causes they are told."""
    causes: list[str] = []
    for conn in registry.connections(user_id):
        registry.on_missed(conn, lambda _conn, cause: causes.append(cause))
    return causes


async def test_killed_pubsub_connections_are_detected_and_repaired(
    make: MakeRegistry, redis_server: RedisServer
) -> None:
    hooks_a, hooks_b = Hooks(), Hooks()
    a = await make(**hooks_a.options())
    b = await make(**hooks_b.options())
    inbox_a = await member(a, 1, "boys")
    inbox_b = await member(b, 2, "boys")

    with redis_server.client() as raw:
        assert raw.client_kill_filter(_type="pubsub") >= 2
    await wait_until(lambda: stats(a)["reconnects"] == 1 and stats(b)["reconnects"] == 1)
    await wait_until(lambda: not stats(a)["down"] and not stats(b)["down"])
    await wait_until(lambda: hooks_a.up == 1 and hooks_b.up == 1)
    assert len(hooks_a.down) == 1 and len(hooks_b.down) == 1

    # what was published while the subscriptions were down is unknown to a and b: their
    # sockets are told (closed with 1013, so that clients reconnect and reload), never silent
    for inbox, registry in ((inbox_a, a), (inbox_b, b)):
        closed = await inbox.next()
        assert closed["code"] == 1013 and "missed" in closed["reason"], closed
        await wait_until(lambda r=registry: r.stats().missed_told == 1)  # type: ignore[misc]
    inbox_a = await member(a, 1, "boys")
    inbox_b = await member(b, 2, "boys")
    await b.send_group("boys", "after the kill")
    assert await inbox_a.text() == "after the kill"
    assert await inbox_b.text() == "after the kill"


async def test_sends_fail_fast_during_an_outage_and_work_after_it(
    make: MakeRegistry, redis_server: RedisServer, prefix: str
) -> None:
    hooks = Hooks()
    a = await make(**hooks.options())
    b = await make()
    publisher = await make(listen=False)
    inbox_a = await member(a, 1, "boys")
    conn_a = a.connections(1)[0]
    causes = told(a, 1)
    inbox_b = await member(b, 2, "boys")
    told(b, 2)

    redis_server.kill()
    try:
        await wait_until(lambda: stats(a)["down"] and stats(b)["down"])
        assert len(hooks.down) == 1
        for registry in (a, publisher):
            # raised while Redis is still down: the send did not wait for it to come back,
            # and says "not sent" (the inbox below never gets it)
            with pytest.raises(BackendUnavailable) as refused:
                await registry.send_group("boys", "lost")
            assert not isinstance(refused.value, DeliveryUnknown)
        with pytest.raises(BackendUnavailable):
            await a.presence("boys")
        # a logout never fails for the backend's sake: it reaches b once Redis is back
        await a.disconnect_user(2)
        assert inbox_b.empty()
        # local sockets keep working, and joins during the outage are kept for later
        await conn_a.send("local still works")
        assert await inbox_a.text() == "local still works"
        await a.join(conn_a, "joined during outage")
    finally:
        redis_server.restart()

    await wait_until(lambda: not stats(a)["down"] and not stats(b)["down"], timeout=10)
    await wait_until(lambda: hooks.up == 1)
    assert stats(a)["reconnects"] == 1
    assert {"g:boys", "g:joined during outage", "u:1", "*", "control"} <= set(
        a.backend.channels()  # type: ignore[attr-defined]
    )
    assert await inbox_b.close_code() == 4401  # the logout made during the outage
    await publisher.send_group("joined during outage", "restored")
    assert await inbox_a.text() == "restored"
    assert len(causes) == 1 and "connecting" in causes[0]  # told, and the socket stays
    # presence was lost with Redis' memory and is written again on reconnection
    assert await b.presence("boys") == {"1": 1}
    with redis_server.client() as raw:
        assert raw.sismember(f"{prefix}:processes", a.backend.process_id)  # type: ignore[attr-defined]


@pytest.mark.parametrize("history", [False, True], ids=["plain", "kept"])
async def test_a_publish_left_without_a_reply_is_unknown_and_indeed_may_arrive(
    make: MakeRegistry, redis_server: RedisServer, history: bool
) -> None:
    """A frozen link after the write: "may have been delivered", never "not sent" — and it
    is delivered once the link moves again, exactly once (the publish is never repeated)."""
    options: dict[str, Any] = {"history": HistoryLimits()} if history else {}
    proxy = PausableProxy(redis_server.port)
    await proxy.start()
    try:
        subscriber = await make(**options)
        inbox = await member(subscriber, 1, "boys")
        publisher = await make(proxy.url, listen=False, socket_timeout=0.5, **options)
        await publisher.send_group("boys", "before")
        assert await inbox.text() == "before"
        proxy.pause()
        with pytest.raises(DeliveryUnknown):
            await publisher.send_group("boys", "maybe")
        proxy.resume()
        assert await inbox.text() == "maybe"
        await publisher.send_group("boys", "after")
        assert await inbox.text() == "after"  # not a second "maybe"
        assert publisher.stats().backend["unknown"] == 1
    finally:
        await proxy.close()


async def test_concurrent_publishes_each_arrive_once(make: MakeRegistry) -> None:
    """Publishes share one connection kept for them and the pool: two hundred at once, from a
    plain and a recoverable group, each arrive exactly once and none is refused."""
    subscriber = await make(history=HistoryLimits())
    inbox = await member(subscriber, 1, "boys")
    publisher = await make(listen=False, history=HistoryLimits())
    sent = [f"m{i}" for i in range(200)]
    await asyncio.gather(
        *(publisher.send_group("boys", text, history=i % 2 == 0) for i, text in enumerate(sent))
    )
    got = [await inbox.text() for _ in sent]
    assert sorted(got) == sorted(sent)
    assert inbox.empty()
    assert publisher.stats().backend["errors"] == 0


async def test_a_silent_half_open_link_is_detected_and_repaired(
    make: MakeRegistry, redis_server: RedisServer
) -> None:
    proxy = PausableProxy(redis_server.port)
    await proxy.start()
    try:
        hooks = Hooks()
        a = await make(proxy.url, **hooks.options())
        b = await make()
        inbox_a = await member(a, 1, "boys")
        causes = told(a, 1)
        await member(b, 2, "boys")

        proxy.pause()  # nothing is closed: the socket just goes quiet
        # no TCP error ever comes: only an unanswered health check can tell (GUARD: hang guard)
        await wait_until(lambda: stats(a)["down"], timeout=GUARD)
        assert "no reply from Redis" in str(hooks.down[0])
        with pytest.raises(BackendUnavailable):
            await a.send_group("boys", "nope")

        proxy.resume()
        await wait_until(lambda: not stats(a)["down"], timeout=10)
        await wait_until(lambda: hooks.up == 1)
        await b.send_group("boys", "heard again")
        assert await inbox_a.text() == "heard again"
        await a.send_group("boys", "and speaking")
        assert await inbox_a.text() == "and speaking"
        assert len(causes) == 1 and "no reply from Redis" in causes[0]
    finally:
        await proxy.close()


def the_task(name: str) -> asyncio.Task[Any]:
    """The one running task called ``name`` (the library names its background tasks)."""
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]
    assert len(tasks) == 1, tasks
    return tasks[0]


async def test_a_crashed_listener_or_supervisor_is_restarted(make: MakeRegistry) -> None:
    hooks = Hooks()
    a = await make(**hooks.options())
    b = await make(listen=False)  # publishes only: ``a`` has the one listener in this loop
    inbox = await member(a, 1, "boys")
    causes = told(a, 1)

    the_task("asgi_groups.redis.listener").cancel()  # the listener task dies
    await wait_until(lambda: stats(a)["reconnects"] == 1 and not stats(a)["down"])
    await b.send_group("boys", "listening again")
    assert await inbox.text() == "listening again"

    the_task("asgi_groups.redis.supervisor").cancel()  # even its supervisor dies
    await wait_until(lambda: stats(a)["reconnects"] == 2 and not stats(a)["down"])
    await b.send_group("boys", "supervised again")
    assert await inbox.text() == "supervised again"
    assert len(hooks.down) == 2
    await wait_until(lambda: hooks.up == 2)
    await wait_until(lambda: len(causes) == 2)


async def test_redis_restart_while_messages_flow_between_processes(
    redis_server: RedisServer, redis_url: str, prefix: str
) -> None:
    env = child_env(redis_url, prefix, ASGI_GROUPS_HEALTH_CHECK="0.5")
    with serve_process(APP, env=env) as (a, _), serve_process(APP, env=env) as (b, _):
        sender = await WsClient.open(a, "sender")
        watch_a = await WsClient.open(a, "watch-a")
        watch_b = await WsClient.open(b, "watch-b")
        reader = await WsClient.open(b, "reader", ("flow",))
        outcomes: list[str] = []
        stop = asyncio.Event()

        async def flow() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                reply = await sender.command("send_group", group="flow", text=f"m{n}")
                outcomes.append("ok" if reply["ok"] else reply["error"])
                await asyncio.sleep(0.01)

        flowing = asyncio.create_task(flow())
        try:
            await wait_until(lambda: outcomes.count("ok") >= 5)
            redis_server.kill()

            def down(s: dict[str, Any]) -> bool:
                return bool(s["stats"]["down"]) and s["hooks"]["down"] == 1

            await eventually(lambda: watch_a.command("stats"), down)
            await eventually(lambda: watch_b.command("stats"), down)
            await wait_until(lambda: "BackendUnavailable" in outcomes)
            redis_server.restart()

            def up(s: dict[str, Any]) -> bool:
                return not s["stats"]["down"] and s["hooks"]["up"] == 1

            await eventually(lambda: watch_a.command("stats"), up, timeout=10)
            await eventually(lambda: watch_b.command("stats"), up, timeout=10)
            failures = len(outcomes) - outcomes.count("ok")
            await wait_until(lambda: outcomes[-3:] == ["ok"] * 3)
        finally:
            stop.set()
            await flowing

        # both processes stayed up; subscriptions are back; new messages arrive
        await sender.command("send_group", group="flow", text="after recovery")
        while (message := await reader.message()) != "after recovery":
            assert message.startswith("m")
        assert failures >= 1
        # every socket was told that messages published during the break may be missing
        for client in (sender, watch_a, watch_b, reader):
            assert client.missed, client.id
        await watch_a.command("send_user", user="reader", text="direct after recovery")
        assert await reader.message() == "direct after recovery"
        for client in (sender, watch_a, watch_b, reader):
            await client.close()


async def test_a_sigkilled_process_leaves_no_presence_after_its_ttl(
    redis_server: RedisServer, redis_url: str, prefix: str
) -> None:
    ttl = 1.5
    env = child_env(redis_url, prefix, ASGI_GROUPS_PRESENCE_TTL=str(ttl))
    room = "room" + uuid.uuid4().hex[:6]
    with serve_process(APP, env=env) as (a, proc_a), serve_process(APP, env=env) as (b, _):
        doomed = await WsClient.open(a, "doomed", (room,))
        survivor = await WsClient.open(b, "survivor", (room,))

        async def presence() -> dict[str, int]:
            return dict((await survivor.command("presence", group=room))["presence"])

        assert await presence() == {"doomed": 1, "survivor": 1}
        proc_a.send_signal(signal.SIGKILL)
        # nobody removes the dead process's entries: only their TTL can (GUARD: a hang guard)
        await eventually(presence, lambda p: p == {"survivor": 1}, timeout=GUARD)
        with redis_server.client() as raw:
            # the dead process's own entries expire too (only the survivor's stays) ...
            await wait_until(
                lambda: len(raw.keys(f"{prefix}:presence:{room}:*")) == 1, timeout=GUARD
            )
            # ... and the survivor's heartbeat prunes it from the set of processes
            await wait_until(lambda: raw.scard(f"{prefix}:processes") == 1, timeout=GUARD)
        with pytest.raises(Exception):  # noqa: B017 - any close error: the server is gone
            await doomed.message(timeout=2)
        await survivor.close()
