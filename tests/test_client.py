"""The Python client against real uvicorn servers (RecoverableView, memory backend).

Every test counts what the application sees, per channel: what was delivered, what was lost,
what came twice, and in which order. Network trouble comes from a TCP proxy between the
client and the server (``tests/support/tcpproxy.py``).
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed as SocketClosed

from asgi_groups import HistoryLimits, Position, QueueLimits, Registry
from asgi_groups.client import (
    ChannelStatus,
    Client,
    ClientClosed,
    HistoryError,
    Message,
    NotConnected,
    OfflineQueueFull,
    State,
)
from asgi_groups.types import Receive, Scope, Send

from .support.protocol import open_raw
from .support.servers import serve
from .support.tcpproxy import TcpProxy
from .support.waiting import wait_until
from .test_recovery import app_for

GROUP = "g:lobby"
ME = "u:1"
#: A hang guard only: nothing here waits for a timeout to expire.
GUARD = 10.0
#: Short timings: a dead link is noticed in about 0.2 + 0.3 + 0.3 s.
FAST: dict[str, Any] = {
    "min_delay": 0.01,
    "max_delay": 0.1,
    "ping_interval": 0.2,
    "ping_timeout": 0.3,
    "close_timeout": 0.3,
    "open_timeout": 2.0,
    "welcome_timeout": 2.0,
    "history_timeout": 5.0,
}


def client_for(address: str, user: int | None = 1, **options: Any) -> Client:
    """A client of the test app's ``/ws`` as ``user`` (cookie), same-site Origin."""
    headers = {"Cookie": f"session={user}"} if user is not None else {}
    return Client(
        f"ws://{address}/ws", headers=headers, origin=f"http://{address}", **{**FAST, **options}
    )


@dataclass
class Tally:
    """What the application got, per channel, in order."""

    got: dict[str | None, list[Any]] = field(default_factory=dict)
    offsets: dict[str | None, list[int | None]] = field(default_factory=dict)

    def take(self, message: Message) -> None:
        self.got.setdefault(message.channel, []).append(message.data)
        self.offsets.setdefault(message.channel, []).append(message.offset)

    async def read(self, client: Client, count: int) -> None:
        async with asyncio.timeout(GUARD):
            for _ in range(count):
                self.take(await client.recv())

    def check(self, channel: str | None, expected: list[Any]) -> None:
        """Delivered all of ``expected``, lost none, none twice, in order."""
        got = self.got.get(channel, [])
        seen = Counter(map(repr, got))
        lost = [item for item in expected if repr(item) not in seen]
        duplicated = [item for item, n in seen.items() if n > 1]
        assert (len(got), lost, duplicated) == (len(expected), [], [])
        assert got == expected


class States:
    """``on_state`` that records every state and lets a test wait for one."""

    def __init__(self) -> None:
        self.seen: list[State] = []
        self._changed = asyncio.Event()

    def __call__(self, state: State) -> None:
        self.seen.append(state)
        self._changed.set()

    async def reach(self, state: State, after: int = 0) -> None:
        """Wait until ``state`` appears at or after index ``after``."""
        async with asyncio.timeout(GUARD):
            while state not in self.seen[after:]:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def hub() -> AsyncIterator[tuple[str, Registry]]:
    registry = Registry(history=HistoryLimits(size=1000, ttl=60, max_replay=1000))
    async with registry, serve(app_for(registry)) as address:
        yield address, registry


@pytest.fixture
async def proxied(hub: tuple[str, Registry]) -> AsyncIterator[tuple[TcpProxy, Registry]]:
    address, registry = hub
    async with TcpProxy(address) as proxy:
        yield proxy, registry


async def test_live_messages_positions_and_history(hub: tuple[str, Registry]) -> None:
    address, registry = hub
    states = States()
    async with client_for(address, on_state=states) as client:
        first = await client.recovered()
        assert first.recovered is True
        assert set(first.channels) == {"g:boys", GROUP, ME, "*"}
        assert all(s.reason == "no position" for s in first.channels.values())
        assert client.state == "open" and client.welcome is not None
        assert client.welcome["user"] == "1"
        epoch = first.channels[GROUP].position
        assert epoch is not None and epoch.offset == 0

        for n in range(5):
            await registry.send_group("lobby", {"n": n})
        await registry.send_user(1, "direct")
        await registry.send_group("lobby", b"\x00\xff")
        tally = Tally()
        await tally.read(client, 7)
        tally.check(GROUP, [{"n": n} for n in range(5)] + [b"\x00\xff"])
        tally.check(ME, ["direct"])
        assert tally.offsets[GROUP] == [1, 2, 3, 4, 5, 6]
        assert client.positions[GROUP] == Position(epoch.epoch, 6)
        assert client.positions[ME].offset == 1

        history = await client.history(GROUP, 3)
        assert history.channel == GROUP and history.position == Position(epoch.epoch, 6)
        assert [(m.offset, m.data) for m in history.messages] == [
            (4, {"n": 3}),
            (5, {"n": 4}),
            (6, b"\x00\xff"),
        ]
        with pytest.raises(HistoryError) as refused:
            await client.history("g:girls")
        assert refused.value.error == "forbidden"

        await client.send({"ping": 1})  # the app echoes its own frames, without a channel
        assert await client.recv() == Message(None, {"echo": {"ping": 1}})
        assert client.duplicates == 0 and client.pending == 0
    assert states.seen == ["connecting", "open", "closed"]
    with pytest.raises(ClientClosed) as closed:
        await client.recv()
    assert closed.value.code == 1000


async def test_coalesced_frames_are_split() -> None:
    registry = Registry(limits=QueueLimits(coalesce=16), history=HistoryLimits())
    async with registry, serve(app_for(registry)) as address, client_for(address) as client:
        for n in range(60):
            await registry.send_group("lobby", {"n": n})
        tally = Tally()
        await tally.read(client, 60)
    tally.check(GROUP, [{"n": n} for n in range(60)])


async def test_a_silent_cut_loses_nothing(proxied: tuple[TcpProxy, Registry]) -> None:
    """The link goes dead without a close while 200 messages go to the group and 200 to the
    user: the client notices (pings), reconnects, and has all 400, in order, none twice."""
    proxy, registry = proxied
    states = States()
    async with client_for(proxy.address, on_state=states) as client:
        first = (await client.recovered()).channels[GROUP].position
        assert first is not None
        tally = Tally()
        await registry.send_group("lobby", {"n": -1})
        await tally.read(client, 1)

        proxy.stall()
        mark = len(states.seen)
        for n in range(200):
            await registry.send_group("lobby", {"n": n})
            await registry.send_user(1, {"n": n})
        await states.reach("reconnecting", mark)
        async with asyncio.timeout(GUARD):
            again = await client.recovered()
        assert again.recovered is True
        assert again.channels[GROUP] == ChannelStatus(True, None, Position(first.epoch, 1))
        await tally.read(client, 400)
        await registry.send_group("lobby", {"n": 200})  # live again after the replay
        await tally.read(client, 1)
    tally.check(GROUP, [{"n": n} for n in range(-1, 201)])
    tally.check(ME, [{"n": n} for n in range(200)])
    assert tally.offsets[GROUP] == list(range(1, 203))
    assert states.seen[mark:] == ["reconnecting", "open", "closed"]
    assert client.last_close is not None and client.last_close[0] == 1006


async def test_a_restarted_server_means_a_new_epoch() -> None:
    """The server goes away (1012) and comes back with a new registry: the client reconnects
    on its own and is told that its channels were not recovered ("epoch changed")."""
    old = Registry(history=HistoryLimits())
    new = Registry(history=HistoryLimits())
    states = States()
    async with (
        old,
        new,
        serve(app_for(old)) as old_address,
        serve(app_for(new)) as new_address,
        TcpProxy(old_address) as proxy,
        client_for(proxy.address, on_state=states) as client,
    ):
        await client.recovered()
        for n in range(3):
            await old.send_group("lobby", n)
        tally = Tally()
        await tally.read(client, 3)
        before = client.positions[GROUP]
        assert before.offset == 3

        proxy.target = new_address  # the same address now reaches the new server
        mark = len(states.seen)
        await old.close()  # closes every socket with 1012
        async with asyncio.timeout(GUARD):
            after = await client.recovered()
        assert after.recovered is False
        assert after.channels[GROUP].reason == "epoch changed"
        assert after.channels[ME].reason == "epoch changed"
        assert states.seen[mark:] == ["reconnecting", "open"]
        assert client.last_close == (1012, "server shutting down")
        fresh = client.positions[GROUP]
        assert fresh.epoch != before.epoch and fresh.offset == 0

        await new.send_group("lobby", "new 1")  # offset 1 again: not taken for a duplicate
        await tally.read(client, 1)
        assert tally.offsets[GROUP] == [1, 2, 3, 1]
        assert client.positions[GROUP] == Position(fresh.epoch, 1)
    tally.check(GROUP, [0, 1, 2, "new 1"])


async def test_a_slow_application_is_not_a_slow_reader() -> None:
    """The server keeps 20 frames per connection; the application does not call recv() while
    200 messages of 64 KiB (12.8 MB, incompressible: more than socket buffers hold) go out.
    The client reads in the background: the server never closes it, while a socket that is
    not read is closed with 1013 (the control). The application then gets all 200."""
    registry = Registry(
        limits=QueueLimits(max_messages=20), history=HistoryLimits(size=300, max_replay=300)
    )
    states = States()
    blob = base64.b64encode(os.urandom(48 * 1024)).decode()
    async with (
        registry,
        serve(app_for(registry)) as address,
        client_for(address, on_state=states) as client,
        open_raw(address, 2, max_queue=4) as idle,  # reads nothing: the control
    ):
        await idle.send('{"type":"ag.hello"}')
        for n in range(200):
            await registry.send_group("lobby", f"{n}:{blob}")
            await asyncio.sleep(0)  # publishers take turns with the sockets
        with pytest.raises(SocketClosed) as idle_closed:
            async with asyncio.timeout(GUARD):
                while True:
                    await idle.recv()
        tally = Tally()
        await tally.read(client, 200)
        assert client.state == "open" and client.last_close is None
    assert idle_closed.value.rcvd is not None and idle_closed.value.rcvd.code == 1013
    tally.check(GROUP, [f"{n}:{blob}" for n in range(200)])
    assert states.seen == ["connecting", "open", "closed"]


async def test_a_full_inbox_resumes_from_history(hub: tuple[str, Registry]) -> None:
    """``max_pending=50``: the application takes nothing while 200 messages arrive. The client
    stops at 50, closes its socket (4000), resumes each time half were taken: all 200, once."""
    address, registry = hub
    states = States()
    async with client_for(address, max_pending=50, on_state=states) as client:
        await client.recovered()
        for n in range(200):
            await registry.send_group("lobby", n)
        tally = Tally()
        await tally.read(client, 200)
        assert client.last_close == (4000, "application fell behind")
        resumes = states.seen.count("open") - 1
        assert resumes >= 1  # it did fall behind (how often depends on the pace of recv())
        for _ in range(resumes):
            assert (await client.recovered()).recovered is True
    tally.check(GROUP, [*range(200)])


@pytest.mark.parametrize(("code", "state"), [(4401, "failed"), (1008, "failed"), (1000, "closed")])
async def test_a_terminal_close_stops_the_client(
    proxied: tuple[TcpProxy, Registry], code: int, state: State
) -> None:
    proxy, registry = proxied
    client = client_for(proxy.address)
    await client.connect()
    try:
        for n in range(3):
            await registry.send_user(1, n)
        await registry.disconnect_user(1, code, "bye")
        tally = Tally()
        stopped: ClientClosed | None = None
        try:
            async with asyncio.timeout(GUARD):
                async for message in client:  # a normal close ends the loop; others raise
                    tally.take(message)
        except ClientClosed as exc:
            stopped = exc
        assert (stopped is None) == (state == "closed")
        tally.check(ME, [0, 1, 2])  # what came before the close is still delivered
        with pytest.raises(ClientClosed) as closed:
            await client.recv()
        assert (closed.value.code, closed.value.reason, closed.value.state) == (code, "bye", state)
        assert client.state == state
        assert proxy.accepted == 1  # and it never came back
        with pytest.raises(ClientClosed):
            await client.send("late")
    finally:
        await client.close()


@pytest.mark.parametrize("code", [4429, 4408, 1013, 4400])
async def test_other_closes_reconnect_and_resume(
    proxied: tuple[TcpProxy, Registry], code: int
) -> None:
    """Rate limited, too many errors (after ``max_delay``), slow reader, protocol error: the
    client comes back on its own, and what was published meanwhile is recovered."""
    proxy, registry = proxied
    states = States()
    async with client_for(proxy.address, on_state=states) as client:
        await client.recovered()
        mark = len(states.seen)
        await registry.disconnect_user(1, code, "later")
        await states.reach("reconnecting", mark)
        await registry.send_user(1, "meanwhile")
        async with asyncio.timeout(GUARD):
            assert (await client.recovered()).recovered is True
        assert client.last_close == (code, "later")
        assert await client.recv() == Message(ME, "meanwhile", client.positions[ME].epoch, 1)
    assert proxy.accepted == 2


async def test_an_abandoned_connect_leaves_nothing_running(
    proxied: tuple[TcpProxy, Registry],
) -> None:
    proxy, _ = proxied
    proxy.refusing = True
    states = States()
    client = client_for(proxy.address, max_handshake_failures=None, on_state=states)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await client.connect()
    assert client.state == "closed"
    with pytest.raises(ClientClosed) as closed:  # stopped: its task was awaited, not left
        await client.recv()
    assert closed.value.state == "closed"
    assert states.seen[-1] == "closed" and "open" not in states.seen


async def test_a_refused_handshake_is_terminal(proxied: tuple[TcpProxy, Registry]) -> None:
    proxy, _ = proxied
    client = client_for(proxy.address, user=None)  # anonymous: HTTP 403
    with pytest.raises(ClientClosed) as closed:
        await client.connect()
    assert (closed.value.state, closed.value.code, closed.value.status) == ("failed", 4403, 403)
    assert proxy.accepted == 1


async def test_network_failures_never_stop_the_client(proxied: tuple[TcpProxy, Registry]) -> None:
    """Refused connections (a network down, a server restarting) are retried for ever."""
    proxy, _ = proxied
    proxy.refusing = True
    states: list[str] = []
    client = client_for(proxy.address, max_handshake_failures=3, min_delay=0.01, max_delay=0.05)
    client.on_state = states.append
    task = asyncio.create_task(client.connect())
    await wait_until(lambda: proxy.accepted >= 6, GUARD)  # twice the limit, and still trying
    proxy.refusing = False
    await asyncio.wait_for(task, GUARD)
    try:
        assert client.state == "open" and "failed" not in states
    finally:
        await client.close()


async def test_http_errors_in_a_row_fail() -> None:
    """A handshake answered with HTTP 404 again and again (a wrong URL) stops the client."""
    attempts = 0

    async def not_here(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal attempts
        if scope["type"] == "websocket":
            attempts += 1
            await send({"type": "websocket.http.response.start", "status": 404, "headers": []})
            await send({"type": "websocket.http.response.body", "body": b"no such socket"})

    async with serve(not_here) as address:
        client = client_for(address, max_handshake_failures=3, min_delay=0.01, max_delay=0.05)
        with pytest.raises(ClientClosed) as closed:
            await client.connect()
    assert (closed.value.state, closed.value.code) == ("failed", 1006)
    assert attempts == 3


async def test_offline_sends_are_queued_bounded_and_flushed_in_order(
    proxied: tuple[TcpProxy, Registry],
) -> None:
    proxy, _ = proxied
    states = States()
    options: dict[str, Any] = {"max_queued": 5, "max_handshake_failures": None, "on_state": states}
    async with client_for(proxy.address, **options) as client:
        await client.recovered()
        proxy.refusing = True
        mark = len(states.seen)
        proxy.drop()
        await states.reach("reconnecting", mark)
        for n in range(5):
            await client.send({"seq": n})
        with pytest.raises(OfflineQueueFull):
            await client.send({"seq": 5})
        with pytest.raises(NotConnected):
            await client.history(GROUP)
        proxy.refusing = False
        await client.wait_open()
        await client.send({"seq": 5})
        tally = Tally()
        await tally.read(client, 6)
    tally.check(None, [{"echo": {"seq": n}} for n in range(6)])


async def test_reject_policy_refuses_sends_while_offline(
    proxied: tuple[TcpProxy, Registry],
) -> None:
    proxy, _ = proxied
    states = States()
    options: dict[str, Any] = {
        "offline": "reject",
        "max_handshake_failures": None,
        "on_state": states,
    }
    async with client_for(proxy.address, **options) as client:
        proxy.refusing = True
        proxy.drop()
        await states.reach("reconnecting")
        with pytest.raises(NotConnected) as refused:
            await client.send({"seq": 0})
        assert refused.value.state == "reconnecting"
        assert not isinstance(refused.value, ClientClosed)
        proxy.refusing = False
        await client.wait_open()
        await client.send({"seq": 1})
        assert await client.recv() == Message(None, {"echo": {"seq": 1}})


async def test_saved_positions_resume_a_new_process(hub: tuple[str, Registry]) -> None:
    """``positions`` counts what the application took, not what was read: saved after taking
    5 of 10, a new client gets the other 5 and everything published meanwhile."""
    address, registry = hub
    async with client_for(address) as first:
        for n in range(10):
            await registry.send_group("lobby", n)
        tally = Tally()
        await tally.read(first, 5)
        await first.history(GROUP, 1)  # answered after the 10 messages: all were read
        assert first.pending == 5
        saved = first.positions
    assert saved[GROUP].offset == 5
    for n in range(10, 15):
        await registry.send_group("lobby", n)
    async with client_for(address, positions=saved) as second:
        assert (await second.recovered()).recovered is True
        await tally.read(second, 10)
    tally.check(GROUP, [*range(15)])


async def test_positions_of_channels_no_longer_received_are_forgotten(
    hub: tuple[str, Registry],
) -> None:
    """A client that moved on from a group stops asking about it, so its hellos stay small."""
    address, _ = hub
    async with client_for(address) as first:
        kept = first.positions
    stale = {**kept, "g:left-long-ago": kept[GROUP]}
    async with client_for(address, positions=stale) as second:
        status = (await second.recovered()).channels["g:left-long-ago"]
        assert status.reason == "not subscribed"
        assert set(second.positions) == set(kept)
