"""Recovery through a real uvicorn server (memory backend): resume, reasons, history, bad input."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from asgi_groups import (
    GroupsMiddleware,
    HistoryLimits,
    QueueLimits,
    RecoverableView,
    Registry,
    WsView,
)
from asgi_groups.backends.base import Backend, HistoryUnavailable
from asgi_groups.backends.memory import MemoryBackend
from asgi_groups.client import Client
from asgi_groups.frames import Frame
from asgi_groups.history import Position
from asgi_groups.types import Receive, Scope, Send

from .core_app import USERS
from .support.codecs import PlainCookie
from .support.protocol import Tally, hello, open_raw
from .support.servers import serve

GROUP = "g:lobby"


def client_for(address: str, user: int = 1, **options: Any) -> Client:
    """The official Python client, logged in as ``user`` by the test cookie."""
    return Client(
        f"ws://{address}/ws",
        headers={"Cookie": f"session={user}"},
        origin=f"http://{address}",
        **options,
    )


class Room(RecoverableView):
    """Joins ``lobby`` (and the user's groups); echoes application frames back as they are."""

    login_required = True
    groups = ["lobby"]
    hello_timeout = 0.5

    async def on_message(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.send_json({"echo": json.loads(self.kwargs["text"])})


class Plain(WsView):
    login_required = True
    groups = ["lobby"]


def app_for(registry: Registry) -> Any:
    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        view = Plain if scope["path"] == "/plain" else Room
        await view.as_asgi()(scope, receive, send)

    return GroupsMiddleware(route, registry, sessions=PlainCookie(), users=USERS)


@pytest.fixture
async def hub() -> AsyncIterator[tuple[str, Registry]]:
    registry = Registry(history=HistoryLimits(size=30, ttl=60, max_replay=40))
    async with registry, serve(app_for(registry)) as address:
        yield address, registry


async def test_fresh_client_gets_positions_of_every_channel(hub: tuple[str, Registry]) -> None:
    address, _ = hub
    async with open_raw(address, 1) as ws:
        welcome = await hello(ws)
    assert welcome["recovered"] is True
    assert welcome["user"] == "1"
    assert set(welcome["channels"]) == {"g:boys", GROUP, "u:1", "*"}
    for status in welcome["channels"].values():
        assert status["recovered"] is False and status["reason"] == "no position"
        assert status["offset"] == 0 and status["epoch"]


async def test_reconnect_recovers_everything_missed_in_order(hub: tuple[str, Registry]) -> None:
    """Cut off while 30 messages go to its group and 10 to it directly: all 40, once each."""
    address, registry = hub
    tally = Tally()
    async with open_raw(address, 1) as ws:
        tally.take_welcome(await hello(ws))
        await registry.send_group("lobby", {"n": 0})
        await tally.read(ws, 1)
    for n in range(1, 31):
        await registry.send_group("lobby", {"n": n})
        if n % 3 == 0:
            await registry.send_user(1, f"direct {n}")
    async with open_raw(address, 1) as ws:
        welcome = await hello(ws, tally.positions)
        assert welcome["recovered"] is True
        assert welcome["channels"][GROUP] == {**tally.positions[GROUP], "recovered": True}
        await tally.read(ws, 40)
        await registry.send_group("lobby", {"n": 31})  # live traffic follows the replay
        await tally.read(ws, 1)
    assert tally.messages[GROUP] == [{"n": n} for n in range(32)]
    assert tally.messages["u:1"] == [f"direct {n}" for n in range(3, 31, 3)]


async def test_resume_during_traffic_has_no_gap_and_no_duplicate() -> None:
    """Publishes keep going while a client resumes again and again: each message exactly once."""
    registry = Registry(history=HistoryLimits(size=5000, max_replay=5000))
    total = 0
    tally = Tally()
    resumes = 0
    async with registry, serve(app_for(registry)) as address:
        async with open_raw(address, 2) as ws:
            tally.take_welcome(await hello(ws))

        async def publisher() -> None:
            nonlocal total
            while (resumes < 8 or total < 300) and total < 5000:
                await registry.send_group("lobby", {"n": total})
                total += 1
                await asyncio.sleep(0)  # let the resumes interleave with the publishes

        task = asyncio.create_task(publisher())
        while not task.done():
            async with open_raw(address, 2) as ws:
                assert (await hello(ws, tally.positions))["recovered"] is True
                resumes += 1
                await tally.read(ws, 1)
        await task
        async with open_raw(address, 2) as ws:
            assert (await hello(ws, tally.positions))["recovered"] is True
            await tally.read(ws, total - len(tally.messages[GROUP]))
    assert tally.messages[GROUP] == [{"n": n} for n in range(total)]
    assert resumes >= 8  # the resumes really happened during the traffic


@pytest.mark.parametrize(
    ("missed", "position", "reason"),
    [
        (35, None, "gap larger than history"),  # history keeps 30
        (45, None, "replay cap exceeded"),  # one recovery replays at most 40
        (0, {"epoch": "0123456789abcdef:1", "offset": 0}, "epoch changed"),
        (0, "future", "offset from the future"),
    ],
)
async def test_what_cannot_be_recovered_is_said(
    hub: tuple[str, Registry], missed: int, position: Any, reason: str
) -> None:
    address, registry = hub
    tally = Tally()
    async with open_raw(address, 1) as ws:
        tally.take_welcome(await hello(ws))
    for n in range(missed):
        await registry.send_group("lobby", n)
    mine = dict(tally.positions[GROUP])
    if position == "future":
        mine["offset"] += 5
    elif position is not None:
        mine = position
    async with open_raw(address, 1) as ws:
        welcome = await hello(ws, {**tally.positions, GROUP: mine})
        tally.take_welcome(welcome)
        status = welcome["channels"][GROUP]
        assert welcome["recovered"] is False
        assert status["recovered"] is False and status["reason"] == reason
        top = await registry.recent(GROUP, 0)
        assert status["offset"] == top[0].offset  # it goes on from the newest position
        assert welcome["channels"]["u:1"]["recovered"] is True  # the other channels did recover
        await registry.send_group("lobby", "after")
        await tally.read(ws, 1)
    assert tally.messages[GROUP] == ["after"]


async def test_history_request_answers_the_newest_messages(hub: tuple[str, Registry]) -> None:
    address, registry = hub
    for n in range(60):
        await registry.send_group("lobby", {"n": n})
    async with open_raw(address, 1) as ws:
        await hello(ws)
        await ws.send(json.dumps({"type": "ag.history", "id": 7, "channel": GROUP, "limit": 5}))
        answer = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "ag.history", "id": "x", "channel": "g:girls"}))
        refused = json.loads(await ws.recv())
    assert answer["type"] == "ag.history" and answer["id"] == 7
    assert answer["offset"] == 60
    assert [m["offset"] for m in answer["messages"]] == [56, 57, 58, 59, 60]
    assert [m["data"] for m in answer["messages"]] == [{"n": n} for n in range(55, 60)]
    assert refused == {
        "type": "ag.error",
        "error": "forbidden",
        "detail": "not a channel of this connection",
        "id": "x",
    }


@pytest.mark.parametrize(
    "positions",
    [
        "not an object",
        {GROUP: {"epoch": 5, "offset": 1}},
        {GROUP: {"epoch": "e" * 65, "offset": 1}},
        {GROUP: {"epoch": "e", "offset": -1}},
        {GROUP: {"epoch": "e", "offset": 2**70}},
        {GROUP: {"epoch": "e", "offset": True}},
    ],
)
async def test_malformed_resume_is_refused_plainly(
    hub: tuple[str, Registry], positions: Any
) -> None:
    address, registry = hub
    async with open_raw(address, 1) as other, open_raw(address, 3) as ws:
        await hello(other)
        await ws.send(json.dumps({"type": "ag.hello", "positions": positions}))
        error = json.loads(await ws.recv())
        welcome = json.loads(await ws.recv())
        assert error["type"] == "ag.error" and error["error"] == "invalid"
        assert welcome["type"] == "ag.welcome" and welcome["recovered"] is False
        await registry.send_group("lobby", "still served")
        assert json.loads(await other.recv())["data"] == "still served"
        assert json.loads(await ws.recv())["data"] == "still served"


async def test_positions_of_channels_not_received_are_ignored(hub: tuple[str, Registry]) -> None:
    """Asking about another user's or group's channel never replays it."""
    address, registry = hub
    async with open_raw(address, 1) as ws:
        fresh = await hello(ws)
    await registry.send_user(3, "for amanda only")
    await registry.send_group("girls", "for girls only")
    epoch = fresh["channels"][GROUP]["epoch"]
    async with open_raw(address, 1) as ws:
        welcome = await hello(
            ws,
            {
                "u:3": {"epoch": epoch, "offset": 0},
                "g:girls": {"epoch": epoch, "offset": 0},
            },
        )
        await registry.send_group("lobby", "mine")
        frame = json.loads(await ws.recv())
    assert welcome["channels"]["u:3"] == {"recovered": False, "reason": "not subscribed"}
    assert welcome["channels"]["g:girls"] == {"recovered": False, "reason": "not subscribed"}
    assert frame["data"] == "mine"


async def test_requests_the_socket_cannot_serve_are_answered_with_their_id(
    hub: tuple[str, Registry],
) -> None:
    """A refresh on a cookie socket (nothing to renew) and an unknown protocol frame each get
    an error that names the request, so a client fails the request at once."""
    address, _ = hub
    async with open_raw(address, 1) as ws:
        await hello(ws)
        await ws.send(json.dumps({"type": "ag.refresh", "id": 3, "token": "t"}))
        refused = json.loads(await ws.recv())
        assert (refused["type"], refused["error"], refused["id"]) == (
            "ag.error",
            "refresh_refused",
            3,
        )
        await ws.send(json.dumps({"type": "ag.nonsense", "id": "q1"}))
        unknown = json.loads(await ws.recv())
        assert (unknown["error"], unknown["id"]) == ("invalid", "q1")
        await ws.send(json.dumps({"type": "ag.nonsense", "id": ["not", "an", "id"]}))
        assert "id" not in json.loads(await ws.recv())


async def test_second_hello_closes_4400_and_others_stay(hub: tuple[str, Registry]) -> None:
    address, _ = hub
    async with open_raw(address, 2) as other, open_raw(address, 1) as ws:
        await hello(other)
        await hello(ws)
        await ws.send(json.dumps({"type": "ag.hello"}))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
        await other.send(json.dumps({"ping": 1}))
        assert json.loads(await other.recv()) == {"echo": {"ping": 1}}


async def test_no_hello_starts_a_new_client_after_the_timeout(hub: tuple[str, Registry]) -> None:
    """No hello in time: the client starts without positions and is told that what it missed
    is unknown; its hello, read late (a busy server), is answered, not a protocol error."""
    address, registry = hub
    async with open_raw(address, 1) as ws:
        await registry.send_group("lobby", "held until the welcome")
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "ag.welcome" and welcome["recovered"] is False
        assert json.loads(await ws.recv())["data"] == "held until the welcome"
        await ws.send(json.dumps({"type": "ag.hello", "positions": {}}))
        late = json.loads(await ws.recv())
        assert late["type"] == "ag.error" and "hello_timeout" in late["detail"]
        await registry.send_group("lobby", "still open")
        assert json.loads(await ws.recv())["data"] == "still open"


async def test_plain_view_frames_stay_the_apps_own(hub: tuple[str, Registry]) -> None:
    address, registry = hub
    async with open_raw(address, 1, path="/plain") as ws:
        position = await registry.send_group("lobby", {"n": 1})
        assert json.loads(await ws.recv()) == {"n": 1}
    assert position is not None and position.offset == 1


async def test_without_history_every_channel_says_so() -> None:
    registry = Registry()
    async with registry, serve(app_for(registry)) as address, open_raw(address, 1) as ws:
        welcome = await hello(ws, {GROUP: {"epoch": "e:1", "offset": 3}})
        await registry.send_group("lobby", [1, 2])
        frame = json.loads(await ws.recv())
    assert welcome["recovered"] is False
    assert welcome["channels"][GROUP] == {"recovered": False, "reason": "no history"}
    assert frame == {"type": "ag.message", "channel": GROUP, "data": [1, 2]}


async def test_history_answers_fit_a_clients_frame_limit(hub: tuple[str, Registry]) -> None:
    """Big messages: the answer holds the newest that fit in max_history_bytes, in order."""
    address, registry = hub
    for n in range(10):
        await registry.send_group("lobby", str(n) * (200 * 1024))
    async with open_raw(address, 1, max_size=2**20) as ws:
        await hello(ws)
        await ws.send(json.dumps({"type": "ag.history", "id": 1, "channel": GROUP, "limit": 10}))
        answer = json.loads(await ws.recv())
    assert [m["offset"] for m in answer["messages"]] == [9, 10]  # 2 x 200 KiB <= 512 KiB
    assert answer["messages"][1]["data"][:3] == "999"


async def test_a_slow_reader_closed_1013_recovers_what_it_missed() -> None:
    """A client that stops reading is closed with 1013 when its queue overflows; it comes back
    with the last position it read and gets the rest, once each, in order."""
    registry = Registry(
        history=HistoryLimits(size=500, max_replay=500),
        limits=QueueLimits(max_messages=20, max_bytes=2 * 1024 * 1024),
    )
    blobs = [os.urandom(32 * 1024).hex() for _ in range(200)]  # 12.8 MB, incompressible
    tally = Tally()
    async with registry, serve(app_for(registry)) as address:
        async with open_raw(address, 1, max_queue=1, compression=None) as ws:
            tally.take_welcome(await hello(ws))
            for n, blob in enumerate(blobs):
                await registry.send_group("lobby", {"n": n, "blob": blob})
            assert registry.stats().slow_closed == 1  # its queue overflowed: closed with 1013
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    tally.take(json.loads(await ws.recv()))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        read_before = len(tally.messages.get(GROUP, []))
        async with open_raw(address, 1) as ws:
            welcome = await hello(ws, tally.positions)
            assert welcome["recovered"] is True
            await tally.read(ws, 200 - read_before)
    assert read_before < 200
    assert [m["n"] for m in tally.messages[GROUP]] == list(range(200))


async def test_expired_history_is_said_and_the_client_surfaces_it() -> None:
    clock = [0.0]
    registry = Registry(
        history=HistoryLimits(size=100, ttl=10, meta_ttl=3600),
        backend=MemoryBackend(clock=lambda: clock[0]),
    )
    async with registry, serve(app_for(registry)) as address:
        async with client_for(address) as client:
            await client.recovered()
            saved = client.positions
        for n in range(5):
            await registry.send_group("lobby", n)
        clock[0] += 11  # the messages it missed are older than ttl now
        async with client_for(address, positions=saved) as client:
            recovered = await client.recovered()
    assert recovered.recovered is False
    assert recovered.channels[GROUP].reason == "history expired"
    assert recovered.channels["u:1"].recovered is True  # nothing missed there


async def test_state_sent_without_history_is_delivered_but_not_kept(
    hub: tuple[str, Registry],
) -> None:
    """Presence-like state (``history=False``) reaches live clients, never a replay."""
    address, registry = hub
    async with open_raw(address, 1) as ws:
        await hello(ws)
        assert await registry.send_group("lobby", {"online": 3}, history=False) is None
        live = json.loads(await ws.recv())
    position = await registry.send_group("lobby", "kept")
    _, kept = await registry.recent(GROUP, 10)
    assert live == {"type": "ag.message", "channel": GROUP, "data": {"online": 3}}
    assert position is not None and position.offset == 1
    assert [entry.frame.payload for entry in kept] == ["kept"]


def test_a_backend_without_history_is_refused_when_the_registry_is_made() -> None:
    class NoHistory(Backend):
        name = "nohistory"

        async def publish(
            self, channel: str, frame: Frame, exclude: str | None, history: bool = False
        ) -> Position | None:
            return None

        async def subscribe(self, channel: str) -> None:
            return None

        def unsubscribe(self, channel: str) -> None:
            return None

        async def control(self, op: str, args: dict[str, Any]) -> None:
            return None

        async def presence(self, group: str) -> dict[str, int]:
            return {}

    with pytest.raises(HistoryUnavailable, match="nohistory"):
        Registry(history=HistoryLimits(), backend=NoHistory())
    Registry(backend=NoHistory())  # without history it is fine
