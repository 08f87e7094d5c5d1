"""Fixed-input tests for rules of the core that only a random test, or none, guarded.

The first four are the hand-made bugs that survived the suite before (issue 10): a direct
message matched by substring, ``send_user`` ignoring ``exclude``, ``"*"`` admitting the ``null``
origin, ``login_required`` trusting a user object's truthiness. The rest pin down what the
Registry asks of its backend and what its public methods promise, one fixed input at a time.
See docs/CONTRIBUTING.md, "Mutation testing".
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Literal

import pytest

from asgi_groups import (
    ConnectionClosed,
    GroupsMiddleware,
    InMemoryUsers,
    MessageTooLarge,
    QueueLimits,
    Registry,
    RegistryClosed,
    SimpleUser,
    WsView,
)
from asgi_groups.backends.memory import MemoryBackend
from asgi_groups.connection import Connection
from asgi_groups.errors import BackendUnavailable
from asgi_groups.messaging import LocalDirectory, StaticDirectory
from asgi_groups.origin import OriginPolicy
from asgi_groups.registry import PresenceEvent
from asgi_groups.router import PresenceChanged, Router, Unsubscribe
from asgi_groups.sync import SyncRegistry
from asgi_groups.testing import WebSocketTestClient

from .fakes import Outbox, drained, owner_task
from .support.codecs import PlainCookie


class Recording(MemoryBackend):
    """The memory backend, writing down every call the registry makes to it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.subscribed = asyncio.Event()
        self.fail_subscribe = ""  # subscribing to channels that start with this fails

    async def subscribe(self, channel: str) -> None:
        self.calls.append(("subscribe", channel))
        self.subscribed.set()
        if self.fail_subscribe and channel.startswith(self.fail_subscribe):
            raise BackendUnavailable("down")

    def unsubscribe(self, channel: str) -> None:
        self.calls.append(("unsubscribe", channel))

    def presence_changed(
        self, group: str, user_id: str, count: int, event: Literal["join", "leave"] | None
    ) -> None:
        self.calls.append(("presence", group, user_id, count, event))
        super().presence_changed(group, user_id, count, event)

    async def flush_presence(self) -> None:
        self.calls.append(("flush",))

    def take(self) -> list[tuple[Any, ...]]:
        calls, self.calls = self.calls, []
        return calls


async def tab(
    registry: Registry, user_id: int | str | None = None, **options: Any
) -> tuple[Connection, Outbox]:
    out = Outbox()
    user = SimpleUser(user_id, f"user{user_id}") if user_id is not None else None
    return await registry.connect(out, user, **options), out


def closes(out: Outbox) -> list[tuple[int, str]]:
    return [(e["code"], e["reason"]) for e in out.events if e["type"] == "websocket.close"]


# -- the four bugs that survived before ---------------------------------------------------------


async def test_send_user_reaches_that_exact_user_only() -> None:
    """User "1" is not "11", "21" or "1 " (the original design matched a substring)."""
    async with Registry() as reg:
        one, o1 = await tab(reg, 1)
        others = [await tab(reg, uid) for uid in ("11", "21", "10", "1 ")]
        await reg.send_user("1", "for one")
        await reg.send_user(1, "for one again")
        await drained(one, *(c for c, _ in others))
        assert o1.texts == ["for one", "for one again"]
        assert all(out.texts == [] for _, out in others)


async def test_direct_messages_find_users_by_their_whole_name() -> None:
    people = [SimpleUser(1, "anna"), SimpleUser(2, "Ann-Marie")]
    static = StaticDirectory(people)
    assert await static.find_user("ann") is None
    assert await static.find_user("ANNA") == (("1", "anna"))
    async with Registry() as reg:
        for person in people:
            await reg.connect(Outbox(), person)
        local = LocalDirectory(reg)
        assert await local.find_user("ann") is None
        assert await local.find_user("nna") is None
        assert await local.find_user("Anna") == ("1", "anna")
        assert await local.find_user("ann-marie") == ("2", "Ann-Marie")


async def test_send_user_skips_the_excluded_tab() -> None:
    """The sender's other tabs get the copy; the tab it came from does not."""
    async with Registry() as reg:
        (a1, o1), (a2, o2), (b, ob) = [await tab(reg, 1), await tab(reg, 1), await tab(reg, 2)]
        await reg.send_user(1, "by connection", exclude=a1)
        await reg.send_user(1, "by id", exclude=a2.id)
        await reg.send_user(1, "someone else's tab excluded", exclude=b)
        await drained(a1, a2, b)
        assert o1.texts == ["by id", "someone else's tab excluded"]
        assert o2.texts == ["by connection", "someone else's tab excluded"]
        assert ob.texts == []


def test_star_does_not_admit_the_null_origin() -> None:
    star = OriginPolicy(["*"])
    assert star.allows("https://elsewhere.example", host="app.test", scheme="wss")
    assert not star.allows("null", host="app.test", scheme="wss")


class TruthyAnonymous:
    """A user object that is truthy but not logged in (e.g. an ORM row for a guest)."""

    id = 99
    username = "guest"
    groups: frozenset[str] = frozenset({"lobby"})
    is_authenticated = False

    def __bool__(self) -> bool:
        return True


class Members(WsView):
    login_required = True

    async def on_connect(self, scope: Any, receive: Any, send: Any) -> None:
        await super().on_connect(scope, receive, send)
        await self.send_text(f"hello {self.request.user.username}")


async def test_login_required_asks_is_authenticated_not_truthiness() -> None:
    guest, member = TruthyAnonymous(), SimpleUser(1, "member")
    async with Registry() as reg:
        app = GroupsMiddleware(
            Members.as_asgi(),
            reg,
            sessions=PlainCookie(),
            users=InMemoryUsers([guest, member]),  # type: ignore[list-item]
            allowed_origins=["*"],
        )
        async with WebSocketTestClient(app, cookies={"session": "1"}) as ws:
            assert await ws.receive_text() == "hello member"
        refused = WebSocketTestClient(app, cookies={"session": "99"})
        assert not await refused.connect()
        assert refused.status == 403
        assert reg.stats().connections == 0


async def test_a_truthy_anonymous_user_is_not_a_user_of_the_registry() -> None:
    guest: Any = TruthyAnonymous()
    async with Registry() as reg, reg.attached(Outbox(), guest, ["lobby"]) as conn:
        assert conn.user is None and conn.user_id is None
        assert await reg.presence("lobby") == {}
        assert reg.connections("99") == []


# -- what the registry asks of its backend ------------------------------------------------------


async def test_start_subscribes_broadcast_and_connect_the_users_channel() -> None:
    backend = Recording()
    async with Registry(backend=backend) as reg:
        assert reg.backend is backend
        assert backend.take() == [("subscribe", "*")]
        await tab(reg, 1)
        assert backend.take() == [("subscribe", "u:1")]
        await tab(reg)
        assert backend.take() == []


async def test_join_subscribes_then_waits_for_presence() -> None:
    backend = Recording()
    async with Registry(backend=backend) as reg:
        (a, _), (anon, _) = [await tab(reg, 1), await tab(reg)]
        backend.take()
        await reg.join(anon, "g")
        assert backend.take() == [("subscribe", "g:g")]  # no presence for anonymous members
        await reg.join(a, "g")
        assert backend.take() == [("presence", "g", "1", 1, "join"), ("flush",)]
        await reg.join(a, "g")  # already there
        assert backend.take() == []
        await reg.leave(anon, "g")
        assert backend.take() == []
        await reg.leave(a, "g")
        assert backend.take() == [("unsubscribe", "g:g"), ("presence", "g", "1", 0, "leave")]


async def test_a_join_the_backend_refuses_is_undone() -> None:
    backend = Recording()
    async with Registry(backend=backend) as reg:
        conn, _ = await tab(reg, 1)
        backend.take()
        backend.fail_subscribe = "g:"
        with pytest.raises(BackendUnavailable):
            await reg.join(conn, "g")
        assert reg.groups_of(conn) == frozenset()
        assert backend.take() == [
            ("presence", "g", "1", 1, "join"),
            ("subscribe", "g:g"),
            ("unsubscribe", "g:g"),
            ("presence", "g", "1", 0, "leave"),
        ]
        assert await reg.presence("g") == {}


async def test_a_closed_connection_leaves_every_channel() -> None:
    backend = Recording()
    async with Registry(backend=backend) as reg:
        conn, _ = await tab(reg, 1)
        await reg.join(conn, "g")
        backend.take()
        conn.close()
        assert backend.take() == [
            ("unsubscribe", "g:g"),
            ("presence", "g", "1", 0, "leave"),
            ("unsubscribe", "u:1"),
        ]
        assert reg.get(conn.id) is None


# -- registry API ------------------------------------------------------------------------------


async def test_a_new_registry_is_memory_stopped_and_says_so() -> None:
    reg = Registry()
    assert reg.url == "memory://"
    assert reg.started is False
    assert reg.loop is None
    assert repr(reg) == "<Registry memory:// connections=0>"
    await reg.send_group("g", "x")  # the first use starts it, here
    assert reg.started is True
    assert reg.loop is asyncio.get_running_loop()
    await reg.close()
    assert reg.started is False
    await reg.close()  # twice is fine
    with pytest.raises(RegistryClosed, match=r"^the registry is closed: start\(\) it again"):
        await reg.send_group("g", "x")
    with pytest.raises(RegistryClosed):
        await reg.connect(Outbox())
    await reg.start()  # an explicit start opens it again
    assert reg.started is True
    await reg.close()


async def test_close_closes_every_socket_with_1012() -> None:
    reg = Registry()
    await reg.start()
    conn, out = await tab(reg, 1)
    await reg.close()
    await conn.wait_closed()
    assert closes(out) == [(1012, "server shutting down")]


async def test_close_cancels_and_waits_for_background_work() -> None:
    cleaned = asyncio.Event()
    running = asyncio.Event()

    async def slow(event: PresenceEvent) -> None:
        running.set()
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            cleaned.set()

    reg = Registry()
    await reg.start()
    reg.on_presence(slow)
    conn, _ = await tab(reg, 1)
    await reg.join(conn, "g")
    await running.wait()
    await reg.close()  # does not raise the task's CancelledError
    assert cleaned.is_set()  # the callback's cleanup ran before close returned


async def test_connect_passes_its_owner_to_the_connection() -> None:
    stuck = asyncio.Event()

    async def send(event: Any) -> None:
        await stuck.wait()

    task, owner_cancelled = owner_task()
    async with Registry(limits=QueueLimits(close_timeout=0.01)) as reg:
        conn = await reg.connect(send, None, owner=task)
        conn.close()
        await owner_cancelled.wait()
        assert conn.killed


async def test_lookups_by_id_and_user() -> None:
    async with Registry() as reg:
        (a1, _), (a2, _), (b, _), (anon, _) = [
            await tab(reg, 1),
            await tab(reg, 1),
            await tab(reg, 2),
            await tab(reg),
        ]
        assert reg.get(a1.id) is a1 and reg.get(anon.id) is anon
        assert reg.get("nope") is None
        assert set(reg.connections("1")) == {a1, a2}
        assert reg.connections(2) == [b]
        assert set(reg.connections()) == {a1, a2, b, anon}


async def test_join_refuses_a_connection_it_does_not_hold() -> None:
    async with Registry() as reg, Registry() as other:
        foreign, _ = await tab(other, 1)
        with pytest.raises(ConnectionClosed, match=f"connection {foreign.id} is closed"):
            await reg.join(foreign, "g")
        conn, _ = await tab(reg, 1)
        conn.close()
        with pytest.raises(ConnectionClosed):
            await reg.join(conn, "g")


async def test_max_message_size_is_inclusive() -> None:
    async with Registry(max_message_size=5) as reg:
        conn, out = await tab(reg, 1)
        await reg.send_user(1, "12345")
        with pytest.raises(MessageTooLarge, match="message of 6 bytes is over max_message_size=5"):
            await reg.send_user(1, "123456")
        await drained(conn)
        assert out.texts == ["12345"]


async def test_a_slow_reader_leaves_the_registry_during_the_send() -> None:
    async with Registry(limits=QueueLimits(max_messages=1)) as reg:
        (slow, so), (fast, fo) = [await tab(reg, 1), await tab(reg, 2)]
        for conn in (slow, fast):
            await reg.join(conn, "g")
        so.gate.clear()
        await reg.send_group("g", "1")  # slow: in send
        await reg.send_group("g", "2")  # slow: queued
        await reg.send_group("g", "3")  # slow: overflow
        assert reg.get(slow.id) is None and reg.groups_of(slow) == frozenset()
        assert await reg.presence("g") == {"2": 1}
        assert reg.stats().slow_closed == 1
        await drained(fast)
        assert fo.texts == ["1", "2", "3"]


async def test_stats_count_every_dropped_frame_and_slow_reader() -> None:
    drop = QueueLimits(max_messages=1, overflow="drop_oldest")
    async with Registry() as reg:
        a, oa = await tab(reg, 1, limits=drop)
        b, ob = await tab(reg, 2, limits=drop)
        oa.gate.clear()
        ob.gate.clear()
        for text in "wxyz":
            await reg.broadcast(text)  # w in send, x queued, y and z each drop one
        assert reg.stats().dropped == 4
        a.close()
        b.close()  # counted after they left
        assert reg.stats().dropped == 4
        assert reg.stats().slow_closed == 0
        slow = QueueLimits(max_messages=1)
        _, oc = await tab(reg, 3, limits=slow)
        _, od = await tab(reg, 4, limits=slow)
        oc.gate.clear()
        od.gate.clear()
        for text in "123":
            await reg.broadcast(text)
        stats = reg.stats()
        assert stats.slow_closed == 2 and stats.dropped == 4
        assert stats.backend == {"name": "memory"}


async def test_disconnect_user_closes_every_tab_with_its_code_and_reason() -> None:
    async with Registry() as reg:
        (a1, o1), (a2, o2), (b, ob) = [await tab(reg, 1), await tab(reg, 1), await tab(reg, 2)]
        await reg.disconnect_user(1, 4403, "banned")
        await reg.disconnect_user(2)
        await drained(a1, a2, b)
        assert closes(o1) == closes(o2) == [(4403, "banned")]
        assert closes(ob) == [(4401, "")]


async def test_join_user_and_leave_user_move_every_tab() -> None:
    backend = Recording()
    async with Registry(backend=backend) as reg:
        (a1, o1), (a2, o2), (b, ob) = [await tab(reg, 1), await tab(reg, 1), await tab(reg, 2)]
        backend.take()
        backend.subscribed.clear()
        await reg.join_user(1, "team")
        await backend.subscribed.wait()  # the new group's channel is subscribed in the background
        assert ("subscribe", "g:team") in backend.take()
        assert reg.groups_of(a1) == reg.groups_of(a2) == {"team"}
        assert reg.groups_of(b) == frozenset()
        assert await reg.presence("team") == {"1": 2}
        await reg.send_group("team", "hi team")
        await reg.leave_user("1", "team")
        assert reg.groups_of(a1) == reg.groups_of(a2) == frozenset()
        assert ("unsubscribe", "g:team") in backend.take()
        await reg.send_group("team", "nobody")
        await drained(a1, a2, b)
        assert o1.texts == o2.texts == ["hi team"] and ob.texts == []
        for bad in ("", "x" * 201):
            with pytest.raises(ValueError):
                await reg.join_user(1, bad)
            with pytest.raises(ValueError):
                await reg.leave_user(1, bad)


async def test_an_unknown_control_operation_changes_nothing() -> None:
    async with Registry() as reg:
        conn, _ = await tab(reg, 1)
        reg.backend.sink.control("explode", {"user_id": "1", "group": "g"})
        assert conn.is_open and reg.groups_of(conn) == frozenset()


# -- presence callbacks ------------------------------------------------------------------------


async def test_presence_callbacks_run_after_the_change_and_can_be_removed() -> None:
    seen: list[PresenceEvent] = []
    arrived = asyncio.Event()

    def callback(event: PresenceEvent) -> None:
        seen.append(event)
        arrived.set()

    async with Registry() as reg:
        remove = reg.on_presence(callback)
        conn, _ = await tab(reg, 1)
        await reg.join(conn, "g")
        await arrived.wait()
        assert seen == [{"type": "presence", "group": "g", "user_id": "1", "event": "join"}]
        remove()
        remove()  # twice is fine
        await reg.leave(conn, "g")
        other = asyncio.Event()
        reg.on_presence(lambda event: other.set())
        await reg.join(conn, "h")
        await other.wait()
        assert len(seen) == 1


async def test_a_failing_presence_callback_does_not_stop_the_others() -> None:
    sync_seen = asyncio.Event()
    async_seen = asyncio.Event()

    def broken(event: PresenceEvent) -> None:
        raise RuntimeError("boom")

    async def broken_async(event: PresenceEvent) -> None:
        raise RuntimeError("boom")

    async def works(event: PresenceEvent) -> None:
        async_seen.set()

    async with Registry() as reg:
        removers = [
            reg.on_presence(broken),
            reg.on_presence(broken_async),
            reg.on_presence(lambda event: sync_seen.set()),
            reg.on_presence(works),
        ]
        conn, _ = await tab(reg, 1)
        await reg.join(conn, "g")
        await sync_seen.wait()
        await async_seen.wait()
        for remove in removers:
            remove()


def test_presence_events_outside_an_event_loop_run_at_once() -> None:
    seen: list[PresenceEvent] = []
    reg = Registry()
    reg.on_presence(seen.append)
    event: PresenceEvent = {"type": "presence", "group": "g", "user_id": "1", "event": "leave"}
    done = threading.Event()

    def other_thread() -> None:
        reg.backend.sink.presence_event(event)
        done.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert done.is_set() and seen == [event]


async def test_the_backend_sink_answers_for_this_process() -> None:
    async with Registry() as reg:
        conn, _ = await tab(reg, 1)
        await reg.join(conn, "g")
        sink = reg.backend.sink
        assert sink.presence("g") == {"1": 1}
        assert sink.presence_snapshot() == {"g": {"1": 1}}
        seen: list[PresenceEvent] = []
        reg.on_presence(seen.append)
        event: PresenceEvent = {"type": "presence", "group": "g", "user_id": "9", "event": "join"}
        sink.presence_event(event)
        assert sink.deliver("g:g", reg.frame("via sink"), None) == 1


def test_sync_is_one_bridge_per_registry() -> None:
    reg = Registry()
    assert isinstance(reg.sync, SyncRegistry)
    assert reg.sync is reg.sync


# -- Registry.attached: one socket's time in the registry --------------------------------------


async def test_attached_uses_the_limits_it_is_given() -> None:
    async with Registry() as reg:
        out = Outbox()
        out.gate.clear()
        tight = QueueLimits(max_messages=1)
        async with reg.attached(out, SimpleUser(1, "a"), limits=tight) as conn:
            assert conn.limits is tight
            for text in "abc":
                await reg.send_user(1, text)  # a: in send, b: queued, c: over the limit
            assert conn.overflowed


async def test_attached_is_entered_once() -> None:
    async with Registry() as reg:
        attachment = reg.attached(Outbox(), None)
        async with attachment:
            with pytest.raises(RuntimeError, match=r"^an attachment is entered once$"):
                await attachment.__aenter__()


async def test_attached_stops_joining_once_the_socket_is_closed() -> None:
    """A socket revoked while an earlier join waited for the backend joins nothing more, and
    the block still gets its (closed) connection."""

    class Revoking(MemoryBackend):
        async def subscribe(self, channel: str) -> None:
            if channel.startswith("g:"):
                for conn in self.registry.connections():
                    conn.close(4401, "revoked")

    backend = Revoking()
    async with Registry(backend=backend) as reg:
        backend.registry = reg  # type: ignore[attr-defined]
        async with reg.attached(Outbox(), SimpleUser(1, "a"), ["a", "b"]) as conn:
            assert isinstance(conn, Connection) and not conn.is_open
            assert reg.groups_of(conn) == frozenset()
        assert reg.stats().connections == 0


async def test_attached_finishes_the_connection_when_a_join_fails() -> None:
    backend = Recording()
    async with Registry(backend=backend) as reg:
        backend.fail_subscribe = "g:"
        with pytest.raises(BackendUnavailable):
            async with reg.attached(Outbox(), SimpleUser(1, "a"), ["a"]):
                pytest.fail("the block does not run")  # pragma: no cover
        assert reg.stats().connections == 0


async def test_a_connect_the_backend_refuses_leaves_nothing_registered() -> None:
    backend = Recording()
    async with Registry(backend=backend) as reg:
        backend.fail_subscribe = "u:"
        with pytest.raises(BackendUnavailable):
            async with reg.attached(Outbox(), SimpleUser(1, "a")):
                pytest.fail("the block does not run")  # pragma: no cover
        assert reg.stats().connections == 0
        assert reg.connections("1") == []


async def test_attached_ends_quietly_only_for_the_librarys_own_teardown() -> None:
    """When the library tears a socket down (its close never completed) the block's task
    ends without being cancelled; any other exception still propagates."""
    forever: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    limits = QueueLimits(close_timeout=0.01)

    async def stuck(event: Any) -> None:
        await asyncio.Event().wait()

    async with Registry(limits=limits) as reg:

        async def torn_down() -> str:
            async with reg.attached(stuck, SimpleUser(1, "a")) as conn:
                conn.close()
                await forever
            return "ended quietly"

        async def fails_during_teardown() -> None:
            async with reg.attached(stuck, SimpleUser(2, "b")) as conn:
                conn.close()
                try:
                    await forever
                except asyncio.CancelledError:
                    raise ValueError("handler failed") from None

        async def fails() -> None:
            async with reg.attached(Outbox(), SimpleUser(3, "c")):
                raise KeyError("handler bug")

        loop = asyncio.get_running_loop()
        assert await loop.create_task(torn_down()) == "ended quietly"
        with pytest.raises(ValueError, match="handler failed"):
            await loop.create_task(fails_during_teardown())
        with pytest.raises(KeyError, match="handler bug"):
            await fails()
        assert reg.stats().connections == 0


async def test_a_control_message_without_code_or_reason_uses_the_defaults() -> None:
    """What another publisher may send on the control channel: only the user id."""
    async with Registry() as reg:
        conn, out = await tab(reg, 1)
        reg.backend.sink.control("disconnect_user", {"user_id": "1"})
        await drained(conn)
        assert closes(out) == [(4401, "")]


# -- the router's membership of a connection in several groups ---------------------------------


class Member:
    def __init__(self, member_id: str, user_id: str | None) -> None:
        self.id = member_id
        self.user_id = user_id


def test_leaving_one_of_three_groups_keeps_the_other_two() -> None:
    router: Router[Member] = Router()
    tab = Member("t1", "1")
    router.connect(tab)
    for group in ("a", "b", "c"):
        router.join(tab, group)
    router.leave(tab, "a")
    assert router.groups_of(tab) == {"b", "c"}
    router.leave(tab, "b")
    assert router.groups_of(tab) == {"c"}
    router.join(tab, "a")
    assert router.groups_of(tab) == {"a", "c"}
    assert set(router.disconnect(tab)) == {
        Unsubscribe("g:a"),
        Unsubscribe("g:c"),
        Unsubscribe("u:1"),
        PresenceChanged("a", "1", 0, "leave"),
        PresenceChanged("c", "1", 0, "leave"),
    }
    assert router.counts == (0, 0, 0)


def test_leaving_with_a_member_that_is_not_connected_changes_nothing() -> None:
    router: Router[Member] = Router()
    with pytest.raises(KeyError, match="is not connected"):
        router.join(Member("ghost", "1"), "a")
    assert router.leave(Member("ghost", "1"), "a") == []
    assert router.groups_of(Member("ghost", "1")) == frozenset()
