"""The Redis backend in one process: several registries on a real redis-server, no mocks."""

from __future__ import annotations

import asyncio

import pytest

from asgi_groups import BackendUnavailable, Frame, MessageTooLarge, Registry
from asgi_groups.backends.base import PresenceEvent
from asgi_groups.backends.redis import (
    ENVELOPE_VERSION,
    EnvelopeError,
    RedisBackend,
    pack_frame,
    parse_sentinel_url,
    safe_url,
    unpack_frame,
)
from asgi_groups.history import Position
from asgi_groups.publish import publish_once
from tests.support.redis import (
    GUARD,
    PATIENT,
    Inbox,
    MakeRegistry,
    RedisServer,
    eventually,
    sentinel_for,
    user,
)
from tests.support.servers import free_port
from tests.support.waiting import wait_until


def backend(registry: Registry) -> RedisBackend:
    assert isinstance(registry.backend, RedisBackend)
    return registry.backend


def received(registry: Registry) -> int:
    return int(registry.stats().backend["received"])


# -- the envelope ------------------------------------------------------------------------------


def test_envelope_round_trips_text_binary_and_exclude() -> None:
    text = Frame.text("héllo ☃")
    data = pack_frame(text, "ab" * 16)
    assert data[0] == ENVELOPE_VERSION and data[1] == 0 and data[2] == 32
    frame, exclude, position = unpack_frame(data)
    assert frame.event == text.event and frame.size == text.size and exclude == "ab" * 16
    assert position is None

    binary = Frame.binary(b"\x00\x01\xff")
    frame, exclude, position = unpack_frame(pack_frame(binary, None))
    assert frame.event == binary.event and frame.size == 3 and exclude is None


def test_envelope_refuses_unknown_versions_and_flags() -> None:
    good = pack_frame(Frame.text("x"), None)
    with pytest.raises(EnvelopeError):
        unpack_frame(bytes((ENVELOPE_VERSION + 1,)) + good[1:])
    with pytest.raises(EnvelopeError):
        unpack_frame(good[:1] + b"\x80" + good[2:])
    with pytest.raises(EnvelopeError):
        unpack_frame(b"")
    with pytest.raises(ValueError):
        pack_frame(Frame.text("x"), "x" * 256)


def test_urls_and_options() -> None:
    assert safe_url("redis://:secret@h:1/0") == "redis://:***@h:1/0"
    assert safe_url("redis://h:1/0") == "redis://h:1/0"
    parsed = parse_sentinel_url("redis+sentinel://:pw@a:26379,b:26380/mymaster/2")
    assert parsed == {
        "sentinels": [("a", 26379), ("b", 26380)],
        "service_name": "mymaster",
        "db": 2,
        "password": "pw",
    }
    ipv6 = parse_sentinel_url("redis+sentinel://[::1],[fe80::2]:26380,c/svc")
    assert ipv6["sentinels"] == [("::1", 26379), ("fe80::2", 26380), ("c", 26379)]
    backend = RedisBackend("redis+sentinel://a:1/svc")
    assert backend.sentinels == [("a", 1)] and backend.service_name == "svc"
    with pytest.raises(ValueError):
        RedisBackend("redis://h", sentinels=[("a", 1)])  # no service_name
    with pytest.raises(ValueError):
        RedisBackend("redis://h", reconnect_backoff=(1.0, 0.5))
    with pytest.raises(ValueError):
        RedisBackend("redis://h", prefix="has space")


# -- fan-out across registries -----------------------------------------------------------------


async def test_group_user_broadcast_and_exclude_across_registries(make: MakeRegistry) -> None:
    a, b = await make(), await make()
    a1, a1_inbox = await user(a, 1)
    b2, b2_inbox = await user(b, 2)
    _, b1_inbox = await user(b, 1)  # user 1's second tab, in the other process
    await a.join(a1, "boys")
    await b.join(b2, "boys")

    await a.send_group("boys", "hello")
    assert await a1_inbox.text() == "hello"
    assert await b2_inbox.text() == "hello"

    await b.send_group("boys", "not for a1", exclude=a1)  # exclude works across processes
    await b.send_group("boys", {"n": 2}, exclude=a1.id)
    await a.send_group("boys", "marker")
    assert await b2_inbox.text() == "not for a1"
    assert await b2_inbox.text() == '{"n":2}'
    assert await b2_inbox.text() == "marker"
    assert await a1_inbox.text() == "marker"

    await b.send_user(1, "dm")  # every tab, every process
    assert await a1_inbox.text() == "dm"
    assert await b1_inbox.text() == "dm"

    await b.send_group("boys", b"\x00bin")
    assert (await a1_inbox.next())["bytes"] == b"\x00bin"
    assert (await b2_inbox.next())["bytes"] == b"\x00bin"

    await a.broadcast("all", exclude=b2)
    await a.broadcast("all again")
    assert [await a1_inbox.text(), await a1_inbox.text()] == ["all", "all again"]
    assert [await b1_inbox.text(), await b1_inbox.text()] == ["all", "all again"]
    assert await b2_inbox.text() == "all again"


async def test_each_process_gets_a_message_once_and_only_its_own_traffic(
    make: MakeRegistry, redis_server: RedisServer, prefix: str
) -> None:
    a, b, c = await make(), await make(), await make()
    publisher = await make(listen=False)
    a_inboxes = []
    for i in range(3):
        conn, inbox = await user(a, f"a{i}")
        await a.join(conn, "boys")
        a_inboxes.append(inbox)
    b_inboxes = []
    for i in range(2):
        conn, inbox = await user(b, f"b{i}")
        await b.join(conn, "boys")
        b_inboxes.append(inbox)
    c_conn, c_inbox = await user(c, "c0")
    await c.join(c_conn, "girls")
    assert redis_server.numsub(f"{prefix}:g:boys") == 2  # a and b, not c
    before = [received(r) for r in (a, b, c)]

    await publisher.send_group("boys", "one")
    await publisher.send_group("girls", "marker")
    for inbox in a_inboxes + b_inboxes:
        assert await inbox.text() == "one"
    assert await c_inbox.text() == "marker"
    # one PUBLISH per send, one receipt per subscribed process, nothing for c from "boys"
    assert publisher.stats().backend["published"] == 2
    assert [received(r) - n for r, n in zip((a, b, c), before, strict=True)] == [1, 1, 1]
    assert all(inbox.empty() for inbox in a_inboxes + b_inboxes)


async def test_last_leave_unsubscribes_and_traffic_stops(
    make: MakeRegistry, redis_server: RedisServer, prefix: str
) -> None:
    a, b = await make(), await make()
    a_conn, _ = await user(a, 1)
    b_conn, b_inbox = await user(b, 2)
    await a.join(a_conn, "boys")
    await b.join(b_conn, "boys")
    await b.leave(b_conn, "boys")
    await wait_until(lambda: redis_server.numsub(f"{prefix}:g:boys") == 1)
    assert "g:boys" not in backend(b).channels()
    start = received(b)
    await a.send_group("boys", "b is gone")
    await a.send_user(2, "marker")
    assert await b_inbox.text() == "marker"
    assert received(b) - start == 1


async def test_join_right_after_leave_ends_subscribed(
    make: MakeRegistry, redis_server: RedisServer, prefix: str
) -> None:
    a, b = await make(), await make()
    conn, inbox = await user(a, 1)
    for _ in range(20):  # the queued UNSUBSCRIBE must not win over the re-join
        await a.join(conn, "g")
        await a.leave(conn, "g")
        await a.join(conn, "g")
    # UNSUBSCRIBEs go out in order: once a later one has, any left from the loop has too
    marker, _ = await user(a, 9)
    await a.join(marker, "marker")
    await a.leave(marker, "marker")
    await wait_until(lambda: redis_server.numsub(f"{prefix}:g:marker") == 0)
    assert "g:g" in backend(a).channels()
    assert redis_server.numsub(f"{prefix}:g:g") == 1
    await b.send_group("g", "still here")
    assert await inbox.text() == "still here"

    # and a join after the UNSUBSCRIBE really went out subscribes again
    await a.leave(conn, "g")
    await wait_until(lambda: redis_server.numsub(f"{prefix}:g:g") == 0)
    await a.join(conn, "g")
    assert redis_server.numsub(f"{prefix}:g:g") == 1
    await b.send_group("g", "back")
    assert await inbox.text() == "back"


async def test_publish_only_registry_and_publish_once(make: MakeRegistry, prefix: str) -> None:
    a, b = await make(), await make()
    a_conn, a_inbox = await user(a, 1)
    b_conn, b_inbox = await user(b, 2)
    await a.join(a_conn, "boys")
    await b.join(b_conn, "boys")

    async with Registry(a.url, prefix=prefix) as outside:  # a process with no sockets
        await outside.send_group("boys", "from outside")
        assert await outside.presence("boys") == {"1": 1, "2": 1}
    assert [await a_inbox.text(), await b_inbox.text()] == ["from outside"] * 2

    await publish_once(a.url, "once", group="boys", prefix=prefix)
    await publish_once(a.url, {"to": "user"}, user=2, prefix=prefix)
    await publish_once(a.url, "everyone", broadcast=True, prefix=prefix)
    assert [await a_inbox.text(), await a_inbox.text()] == ["once", "everyone"]
    assert [await b_inbox.text() for _ in range(3)] == ["once", '{"to":"user"}', "everyone"]
    with pytest.raises(ValueError):
        await publish_once(a.url, "x", group="boys", broadcast=True, prefix=prefix)
    with pytest.raises(ValueError):
        await publish_once("memory://", "x", group="boys")


async def test_oversized_messages_are_refused_before_publishing(make: MakeRegistry) -> None:
    a = await make(max_message_size=100)
    with pytest.raises(MessageTooLarge):
        await a.send_group("boys", "x" * 101)
    await a.send_group("boys", "x" * 100)
    assert a.stats().backend["published"] == 1


# -- presence ----------------------------------------------------------------------------------


async def test_presence_spans_processes_and_is_fresh_after_join(make: MakeRegistry) -> None:
    a, b = await make(), await make()
    tab1, _ = await user(a, 1)
    tab2, _ = await user(a, 1)
    other, _ = await user(b, 2)
    anonymous = await b.connect(Inbox())
    for conn, registry in ((tab1, a), (tab2, a), (other, b), (anonymous, b)):
        await registry.join(conn, "room")
    # join awaited the write: another process sees it at once
    assert await b.presence("room") == {"1": 2, "2": 1}
    assert await a.presence("room") == {"1": 2, "2": 1}
    assert await a.presence("empty") == {}

    tab2.finish()  # a leave is written behind: another process sees it soon, not at once
    await eventually(lambda: b.presence("room"), lambda p: p == {"1": 1, "2": 1})

    await a.close()  # its entries go with it
    assert await b.presence("room") == {"2": 1}


async def test_presence_heartbeat_renews_entries_and_rewrites_what_redis_lost(
    make: MakeRegistry, redis_server: RedisServer
) -> None:
    """A heartbeat renews the TTL of this process's entries without rewriting them (a rewrite
    of thousands of groups stalled the loop), and rewrites them all when one is gone."""
    a = await make(presence_ttl=300.0)  # the test beats by hand
    tab, _ = await user(a, 1)
    await a.join(tab, "room")
    names = backend(a).names
    key, alive = names.presence_key("room"), names.process_key()
    with redis_server.client() as raw:
        raw.hset(key, "ghost", 9)  # a renewal leaves it; a rewrite would not
        raw.pexpire(key, 2_000)
        raw.pexpire(alive, 2_000)
        await backend(a)._presence.keep_alive()
        assert raw.hgetall(key) == {"1": "1", "ghost": "9"}
        assert raw.pttl(key) > 200_000 and raw.pttl(alive) > 200_000
        raw.delete(key)  # Redis lost it (an eviction, a failover)
        await backend(a)._presence.keep_alive()
        assert raw.hgetall(key) == {"1": "1"}
        assert raw.pttl(key) > 200_000
    assert await (await make()).presence("room") == {"1": 1}


async def test_presence_events_reach_every_process(make: MakeRegistry) -> None:
    a, b = await make(), await make()
    seen_b: list[PresenceEvent] = []
    seen_a: list[PresenceEvent] = []

    async def on_b(event: PresenceEvent) -> None:
        seen_b.append(event)

    b.on_presence(on_b)
    remove = a.on_presence(seen_a.append)
    await wait_until(lambda: "presence" in backend(b).channels())
    await wait_until(lambda: "presence" in backend(a).channels())

    tab1, _ = await user(a, 1)
    tab2, _ = await user(a, 1)
    await a.join(tab1, "room")
    await a.join(tab2, "room")  # a second tab is not a new presence
    await a.leave(tab1, "room")
    tab2.finish()
    join = {"type": "presence", "group": "room", "user_id": "1", "event": "join"}
    leave = {**join, "event": "leave"}
    await wait_until(lambda: len(seen_b) == 2)
    assert seen_b == [join, leave]
    await wait_until(lambda: len(seen_a) == 2)
    assert seen_a == [join, leave]
    remove()


async def test_presence_events_with_the_memory_backend() -> None:
    seen: list[PresenceEvent] = []
    async with Registry() as registry:
        registry.on_presence(seen.append)
        conn, _ = await user(registry, 7)
        await registry.join(conn, "room")
        conn.finish()
        await wait_until(lambda: len(seen) == 2)
    assert [e["event"] for e in seen] == ["join", "leave"]
    assert seen[0] == {"type": "presence", "group": "room", "user_id": "7", "event": "join"}


# -- remote control ----------------------------------------------------------------------------


async def test_disconnect_join_and_leave_user_across_processes(make: MakeRegistry) -> None:
    a, b = await make(), await make()
    _, a5_inbox = await user(a, 5)
    _, b5_inbox = await user(b, 5)
    await a.disconnect_user(5)
    assert await a5_inbox.close_code() == 4401
    assert await b5_inbox.close_code() == 4401

    b6, b6_inbox = await user(b, 6)
    await a.join_user(6, "late")
    await wait_until(lambda: "g:late" in backend(b).channels())
    assert "late" in b.groups_of(b6)
    await a.send_group("late", "welcome")
    assert await b6_inbox.text() == "welcome"
    assert await a.presence("late") == {"6": 1}

    await a.leave_user(6, "late")
    await wait_until(lambda: "late" not in b.groups_of(b6))
    assert b.stats().backend["control_received"] == 3


# -- robustness ----------------------------------------------------------------------------------


async def test_unknown_envelopes_are_skipped_and_the_listener_lives(
    make: MakeRegistry, redis_server: RedisServer, prefix: str
) -> None:
    a, b = await make(), await make()
    conn, inbox = await user(a, 1)
    await a.join(conn, "boys")
    with redis_server.client() as raw:
        raw.publish(f"{prefix}:g:boys", b"\x09future format")
        raw.publish(f"{prefix}:control", b"\x01not json")
    await b.send_group("boys", "fine")
    assert await inbox.text() == "fine"
    assert a.stats().backend["skipped"] == 1
    assert a.stats().backend["errors"] == 1  # the bad control message, logged


async def test_a_failing_delivery_does_not_stop_the_listener(make: MakeRegistry) -> None:
    a, b = await make(), await make()
    conn, inbox = await user(a, 1)
    await a.join(conn, "boys")
    deliver = backend(a).sink.deliver

    def broken(
        channel: str, frame: Frame, exclude: str | None, position: Position | None = None
    ) -> int:
        raise RuntimeError("bug in a delivery")

    backend(a).sink.deliver = broken  # type: ignore[method-assign]
    await b.send_group("boys", "lost")
    await wait_until(lambda: a.stats().backend["errors"] == 1)
    backend(a).sink.deliver = deliver  # type: ignore[method-assign]
    await b.send_group("boys", "delivered")
    assert await inbox.text() == "delivered"


async def test_start_fails_fast_and_clean_when_redis_is_unreachable(prefix: str) -> None:
    registry = Registry(f"redis://127.0.0.1:{free_port()}/0", prefix=prefix, **PATIENT)
    with pytest.raises(BackendUnavailable, match="cannot reach Redis"):
        async with asyncio.timeout(GUARD):  # refused, not left to time out (PATIENT)
            await registry.start()
    assert not registry.started
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("asgi_groups")]


async def test_close_removes_presence_subscriptions_and_connections(
    make: MakeRegistry, redis_server: RedisServer, prefix: str
) -> None:
    a, b = await make(), await make()
    conn, _ = await user(a, 1)
    await a.join(conn, "room")
    process = backend(a).process_id
    with redis_server.client() as raw:
        assert raw.exists(f"{prefix}:process:{process}")
        assert raw.exists(f"{prefix}:presence:room:{process}")
        assert process in raw.smembers(f"{prefix}:processes")
    assert len(redis_server.clients(f"{prefix}:{process}")) == 2  # listener + one pooled

    await a.close()
    assert conn.close_code == 1012
    with redis_server.client() as raw:
        assert not raw.exists(f"{prefix}:process:{process}")
        assert not raw.exists(f"{prefix}:presence:room:{process}")
        assert process not in raw.smembers(f"{prefix}:processes")
    assert redis_server.clients(f"{prefix}:{process}") == []
    assert redis_server.numsub(f"{prefix}:control") == 1  # b only
    assert a.stats().backend["down"] is True
    assert b.stats().backend["down"] is False
    names = [t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert len([n for n in names if n.startswith("asgi_groups")]) == 3  # b's three tasks


# -- other ways to reach Redis -------------------------------------------------------------------


async def test_unix_socket_and_sentinel_urls(make: MakeRegistry, redis_server: RedisServer) -> None:
    direct = await make()
    over_unix = await make(redis_server.unix_url)
    conn_unix, inbox_unix = await user(over_unix, 1)
    await over_unix.join(conn_unix, "boys")
    with sentinel_for(redis_server) as sentinel_port:
        via_sentinel = await make(f"redis+sentinel://127.0.0.1:{sentinel_port}/mymaster/0")
        conn_sentinel, inbox_sentinel = await user(via_sentinel, 2)
        await via_sentinel.join(conn_sentinel, "boys")
        await direct.send_group("boys", "one server, three ways in")
        assert await inbox_unix.text() == "one server, three ways in"
        assert await inbox_sentinel.text() == "one server, three ways in"
        assert await via_sentinel.presence("boys") == {"1": 1, "2": 1}
        await via_sentinel.close()
