"""Two registries on one real redis-server against a reference model, under Hypothesis.

Rules connect, join, leave, send (group, user, broadcast, with or without ``exclude``),
disconnect, revoke a user, ask for presence, and kill or restart redis-server. After every
send the machine publishes a barrier broadcast and waits for it on every open connection:
Redis delivers a process's messages in publish order, so once the barrier is in, every
connection's inbox must hold exactly what the model says, in order. While Redis is down every
send and presence query must raise ``BackendUnavailable``, every socket is told once that it
may miss messages, and a revocation closes its own registry's sockets at once and the other's
after the restart; then everything behaves as the model says again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from asgi_groups import BackendUnavailable, Registry, SimpleUser, codes
from asgi_groups.connection import Connection
from asgi_groups.registry import CLOCK_SKEW
from tests.support.redis import Inbox, RedisServer

T = TypeVar("T")

USERS = (1, 2, 3)
GROUPS = ("g1", "g2")
OPTIONS: dict[str, Any] = {
    "health_check_interval": 0.5,
    "socket_timeout": 1.0,
    "connect_timeout": 1.0,
    "reconnect_backoff": (0.02, 0.2),
}
MAX_OPEN = 8
#: What a tab's inbox gets when it is told it may have missed messages (a break in Redis).
MISSED = "<missed>"


@dataclass
class Tab:
    """One connection as the model sees it, and what it has received so far."""

    registry: int
    user: int
    conn: Connection
    inbox: Inbox
    groups: set[str] = field(default_factory=set)
    expected: list[str] = field(default_factory=list)


def keep_open(registry: Registry, conn: Connection, inbox: Inbox) -> None:
    """Tell the tab of a break by a marker in its inbox, as an app's on_missed handler would
    (the default, a 1013 close, is checked elsewhere)."""
    registry.on_missed(
        conn,
        lambda _conn, _cause: inbox.queue.put_nowait({"type": "websocket.send", "text": MISSED}),
    )


async def finish(conn: Connection) -> None:
    """What a view does when its socket is gone (in the event loop, as a view would)."""
    conn.finish()


class Registries(RuleBasedStateMachine):
    """Two registries (think: two server processes) sharing one redis-server."""

    server: RedisServer  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.registries: list[Registry] = []
        self.tabs: dict[int, Tab] = {}
        self.watchers: list[Tab] = []  # one anonymous tab per registry, never closed
        self.handles = 0
        self.sent = 0
        self.down = False
        #: Outages survived so far; tabs opened during the current one.
        self.outages = 0
        self.opened_while_down: set[int] = set()
        #: Revocations made while Redis was down: (registry, user, at).
        self.revoked_while_down: list[tuple[int, int, float]] = []

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 15))  # type: ignore[arg-type]

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - the backends' own state
                await asyncio.sleep(0.01)

    @initialize()
    def start(self) -> None:
        if not self.server.running:
            self.server.start()
        prefix = "m" + uuid.uuid4().hex[:10]
        for _ in range(2):
            registry = Registry(self.server.url, prefix=prefix, **OPTIONS)
            self.run(registry.start())
            self.registries.append(registry)
            # the barrier must reach every registry, also one with no tab of the model open
            inbox = Inbox()
            conn = self.run(registry.connect(inbox, None))
            keep_open(registry, conn, inbox)
            self.watchers.append(Tab(len(self.registries) - 1, 0, conn, inbox))

    def teardown(self) -> None:
        try:
            if not self.server.running:
                self.server.start()
            for registry in self.registries:
                self.run(registry.close())
        finally:
            self.loop.close()

    # -- helpers -----------------------------------------------------------------------------

    def open_tabs(self) -> list[int]:
        return sorted(self.tabs)

    def publish(self, registry: int, action: Callable[[Registry], Awaitable[None]]) -> bool:
        """Run a send; True when it was sent (Redis up), after checking it raised if down."""
        if self.down:
            with pytest.raises(BackendUnavailable):
                self.run(action(self.registries[registry]))
            return False
        self.run(action(self.registries[registry]))
        return True

    def settle(self) -> None:
        """Barrier broadcast; then every open tab's inbox must equal the model's."""
        if self.down:
            return
        self.sent += 1
        barrier = f"barrier{self.sent}"
        self.run(self.registries[0].broadcast(barrier))
        for tab in [*self.tabs.values(), *self.watchers]:
            tab.expected.append(barrier)
        self.run(self._check_inboxes())

    async def _check_inboxes(self) -> None:
        watchers = {-1 - i: tab for i, tab in enumerate(self.watchers)}
        for handle, tab in [*self.tabs.items(), *watchers.items()]:
            got: list[str] = []
            while len(got) < len(tab.expected):
                try:
                    event = await tab.inbox.next(5.0)
                except TimeoutError:
                    raise AssertionError(
                        f"tab {handle}: got {got}, expected {tab.expected}"
                    ) from None
                assert event["type"] == "websocket.send", (handle, event)
                got.append(str(event["text"]))
            assert got == tab.expected, (handle, tab.user, tab.registry, got, tab.expected)
            tab.expected.clear()

    def pick(self, data: st.DataObject) -> int:
        return data.draw(st.sampled_from(self.open_tabs()), label="tab")

    # -- rules -------------------------------------------------------------------------------

    @precondition(lambda self: len(self.tabs) < MAX_OPEN)
    @rule(registry=st.integers(0, 1), user=st.sampled_from(USERS))
    def connect(self, registry: int, user: int) -> None:
        inbox = Inbox()
        reg = self.registries[registry]
        conn = self.run(reg.connect(inbox, SimpleUser(user, f"user{user}")))
        keep_open(reg, conn, inbox)
        self.handles += 1
        self.tabs[self.handles] = Tab(registry, user, conn, inbox)
        if self.down:
            self.opened_while_down.add(self.handles)

    @precondition(lambda self: self.tabs)
    @rule(data=st.data(), group=st.sampled_from(GROUPS))
    def join(self, data: st.DataObject, group: str) -> None:
        tab = self.tabs[self.pick(data)]
        self.run(self.registries[tab.registry].join(tab.conn, group))
        tab.groups.add(group)

    @precondition(lambda self: self.tabs)
    @rule(data=st.data(), group=st.sampled_from(GROUPS))
    def leave(self, data: st.DataObject, group: str) -> None:
        tab = self.tabs[self.pick(data)]
        self.run(self.registries[tab.registry].leave(tab.conn, group))
        tab.groups.discard(group)

    @precondition(lambda self: self.tabs)
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        """The client went away: the view's ``finally`` calls ``finish``."""
        handle = self.pick(data)
        tab = self.tabs.pop(handle)
        self.opened_while_down.discard(handle)
        self.run(finish(tab.conn))

    @rule(
        data=st.data(),
        registry=st.integers(0, 1),
        kind=st.sampled_from(["group", "user", "broadcast"]),
        exclude=st.booleans(),
    )
    def send(self, data: st.DataObject, registry: int, kind: str, exclude: bool) -> None:
        self.sent += 1
        text = f"m{self.sent}"
        skip = self.pick(data) if exclude and self.tabs else None
        conn = self.tabs[skip].conn if skip is not None else None
        if kind == "group":
            group = data.draw(st.sampled_from(GROUPS), label="group")
            sent = self.publish(registry, lambda r: r.send_group(group, text, exclude=conn))
            members = [h for h, t in self.tabs.items() if group in t.groups]
        elif kind == "user":
            user = data.draw(st.sampled_from(USERS), label="user")
            sent = self.publish(registry, lambda r: r.send_user(user, text, exclude=conn))
            members = [h for h, t in self.tabs.items() if t.user == user]
        else:
            sent = self.publish(registry, lambda r: r.broadcast(text, exclude=conn))
            members = list(self.tabs)
            if sent:
                for watcher in self.watchers:
                    watcher.expected.append(text)
        if sent:
            for handle in members:
                if handle != skip:
                    self.tabs[handle].expected.append(text)
        self.settle()

    @rule(registry=st.integers(0, 1), user=st.sampled_from(USERS))
    def disconnect_user(self, registry: int, user: int) -> None:
        """Every tab of ``user``, on both registries, is closed with 4401: at once on the
        registry that revoked, whatever Redis' state; on the other when Redis is back."""
        before = time.time()
        self.run(self.registries[registry].disconnect_user(user))  # never raises
        for handle in [h for h, t in self.tabs.items() if t.user == user]:
            if self.down and self.tabs[handle].registry != registry:
                continue
            self.close_tab(handle)
        if self.down:
            self.revoked_while_down.append((registry, user, before))
        self.settle()

    def close_tab(self, handle: int) -> None:
        """The tab's next event (after any break markers) is its 4401 close."""
        tab = self.tabs.pop(handle)
        self.opened_while_down.discard(handle)
        while (event := self.run(tab.inbox.next(5.0))).get("text") == MISSED:
            if tab.expected and tab.expected[0] == MISSED:
                tab.expected.pop(0)
        assert event == {"type": "websocket.close", "code": codes.UNAUTHORIZED, "reason": ""}
        self.run(finish(tab.conn))

    @rule(registry=st.integers(0, 1), group=st.sampled_from(GROUPS))
    def presence(self, registry: int, group: str) -> None:
        """Presence over both registries: eventually the model's counts (leaves are written
        behind; joins are visible at once)."""
        reg = self.registries[registry]
        if self.down:
            with pytest.raises(BackendUnavailable):
                self.run(reg.presence(group))
            return
        expected: dict[str, int] = {}
        for tab in self.tabs.values():
            if group in tab.groups:
                expected[str(tab.user)] = expected.get(str(tab.user), 0) + 1

        async def converge() -> dict[str, int]:
            seen: dict[str, int] = {}
            async with asyncio.timeout(5):
                while (seen := await reg.presence(group)) != expected:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)  # leaves are written behind, in the other process
            return seen

        assert self.run(converge()) == expected

    @precondition(lambda self: not self.down)
    @rule()
    def kill_backend(self) -> None:
        """SIGKILL redis-server; both registries notice and say they are down."""
        self.server.kill()
        self.down = True
        self.run(self.until(lambda: all(r.backend.down for r in self.registries)))  # type: ignore[attr-defined]
        # every socket is told at once that messages may be missed
        for tab in [*self.tabs.values(), *self.watchers]:
            tab.expected.append(MISSED)

    @precondition(lambda self: self.down)
    @rule()
    def restart_backend(self) -> None:
        """Start redis-server again (empty); both registries reconnect and re-subscribe."""
        self.server.start()
        self.run(self.until(lambda: not any(r.backend.down for r in self.registries)))  # type: ignore[attr-defined]
        self.down = False
        self.outages += 1
        self.run(self.until(lambda: all(r.stats().breaks == self.outages for r in self.registries)))
        # revocations made during the outage land on the other registry now, on the sockets
        # opened before them (a socket of another registry up to CLOCK_SKEW newer, too)
        for registry, user, at in self.revoked_while_down:
            for handle, tab in list(self.tabs.items()):
                limit = at if tab.registry == registry else at + CLOCK_SKEW
                if tab.user == user and tab.conn.opened_at <= limit:
                    self.close_tab(handle)
        self.revoked_while_down.clear()
        # the sockets opened during the outage are told when it ends
        for handle in self.opened_while_down:
            self.tabs[handle].expected.append(MISSED)
        self.opened_while_down.clear()
        self.settle()

    @invariant()
    def local_view_matches(self) -> None:
        """Each registry holds exactly the model's open tabs, in the model's groups."""
        for index, registry in enumerate(self.registries):
            mine = {t.conn for t in self.tabs.values() if t.registry == index}
            mine.add(self.watchers[index].conn)
            assert set(registry.connections()) == mine
            for tab in self.tabs.values():
                if tab.registry == index:
                    assert registry.groups_of(tab.conn) == tab.groups


def test_two_registries_on_redis_follow_the_model(redis_server: RedisServer) -> None:
    """Every delivery, revocation and presence answer of two Redis-backed registries matches
    the reference model, through Redis being killed and restarted (sends in between raise
    ``BackendUnavailable``)."""

    class Machine(Registries):
        server = redis_server

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=15,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


async def test_close_while_reconnecting_does_not_hang(redis_server: RedisServer) -> None:
    """``Registry.close()`` returns when called just as Redis comes back after an outage (tried
    20 times; the 30 s wait is a hang guard, not a promise about speed)."""
    for _ in range(20):
        if not redis_server.running:
            redis_server.start()
        prefix = "c" + uuid.uuid4().hex[:10]
        registries = [Registry(redis_server.url, prefix=prefix, **OPTIONS) for _ in range(2)]
        for registry in registries:
            await registry.start()
        redis_server.kill()
        async with asyncio.timeout(10):
            while not all(r.backend.down for r in registries):  # type: ignore[attr-defined]  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        redis_server.start()
        for registry in registries:
            await asyncio.wait_for(registry.close(), 30)
