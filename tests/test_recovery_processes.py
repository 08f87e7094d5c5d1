"""Recovery across server processes: restarts, deploys (1012) and Redis, in uvicorn children."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from asgi_groups import HistoryLimits
from asgi_groups.client import Client

from .support.protocol import Tally, hello, open_raw
from .support.redis import GUARD, MakeRegistry, RedisServer
from .support.servers import serve_process
from .support.tcpproxy import TcpProxy
from .support.waiting import wait_until

APP = "tests.redis_apps.recoverable_app:app"
GROUP = "g:lobby"


@contextmanager
def server(**env: str) -> Iterator[str]:
    with serve_process(APP, env=env) as (address, _):
        yield address


async def send(address: str, group: str, count: int, first: int = 0) -> None:
    """Publish ``{"n": first..}`` to ``group`` from the server process at ``address``."""
    await _post(address, {"group": group, "n": count, "first": first})


async def send_user(address: str, user: int, count: int) -> None:
    await _post(address, {"user": user, "n": count})


async def _post(address: str, params: dict[str, Any]) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"http://{address}/send", params=params)
        response.raise_for_status()


async def test_memory_server_restart_is_a_new_epoch_and_is_said() -> None:
    """The memory backend keeps history in the process: after a restart the client is told."""
    tally = Tally()
    with server() as address:
        async with open_raw(address, 1) as ws:
            tally.take_welcome(await hello(ws))
            await send(address, "lobby", 3)
            await tally.read(ws, 3)
    with server() as address:
        async with open_raw(address, 1) as ws:
            welcome: dict[str, Any] = await hello(ws, tally.positions)
            await send(address, "lobby", 1, first=3)
            frame = json.loads(await ws.recv())
    assert welcome["recovered"] is False
    reasons = {status["reason"] for status in welcome["channels"].values()}
    assert reasons == {"epoch changed"}
    assert frame["data"] == {"n": 3} and frame["offset"] == 1  # a new history starts at 1


@contextmanager
def redis_servers(url: str, prefix: str, count: int = 2, **env: str) -> Iterator[list[Any]]:
    """``count`` server processes of the recoverable app on one Redis: ``[(address, proc)]``."""
    settings = {"ASGI_GROUPS_REDIS_URL": url, "ASGI_GROUPS_PREFIX": prefix, **env}
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve_process(APP, env=settings)) for _ in range(count)]


async def test_sigterm_under_traffic_clients_recover_through_the_other_process(
    redis_url: str, prefix: str, make: MakeRegistry
) -> None:
    """A deploy: process A is SIGTERMed (1012) while messages flow to a group and to a user;
    its clients come back through process B and get every message once, in order."""
    publisher = await make(listen=False, history=HistoryLimits(size=1000, max_replay=1000))
    tallies = {user: Tally() for user in (1, 2)}
    published = 0
    stop = asyncio.Event()

    async def publish() -> None:
        nonlocal published
        while not stop.is_set():
            await publisher.send_group("lobby", {"n": published})
            await publisher.send_user(1, {"direct": published})
            published += 1
            await asyncio.sleep(0.002)  # a steady stream, not a burst

    servers = redis_servers(redis_url, prefix, ASGI_GROUPS_HISTORY="1000,300,1000")
    with servers as [(first, proc), (second, _)]:
        async with contextlib.AsyncExitStack() as stack:
            sockets = {}
            for user, tally in tallies.items():
                sockets[user] = await stack.enter_async_context(open_raw(first, user))
                tally.take_welcome(await hello(sockets[user]))
            task = asyncio.create_task(publish())
            await tallies[2].read(sockets[2], 20)
            proc.send_signal(signal.SIGTERM)
            codes = set()
            for user, ws in sockets.items():
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        tallies[user].take(json.loads(await ws.recv()))
                assert closed.value.rcvd is not None
                codes.add(closed.value.rcvd.code)
            assert codes == {1012}
        away = len(tallies[2].messages[GROUP])
        await wait_until(lambda: published >= away + 20)  # traffic goes on while they are away
        for user, tally in tallies.items():
            async with open_raw(second, user) as ws:
                welcome = await hello(ws, tally.positions)
                assert welcome["recovered"] is True, welcome["channels"]
                await tally.read(ws, 20)  # replayed, then live
        stop.set()
        await task
        for user, tally in tallies.items():
            async with open_raw(second, user) as ws:
                assert (await hello(ws, tally.positions))["recovered"] is True
                await tally.read(ws, published - len(tally.messages[GROUP]))
                if user == 1:
                    await tally.read(ws, published - len(tally.messages["u:1"]))
    assert tallies[1].messages[GROUP] == [{"n": n} for n in range(published)]
    assert tallies[1].messages["u:1"] == [{"direct": n} for n in range(published)]
    assert tallies[2].messages[GROUP] == [{"n": n} for n in range(published)]
    assert "u:1" not in tallies[2].messages


async def test_redis_restart_is_a_new_epoch_and_is_said(
    redis_server: RedisServer, redis_url: str, prefix: str
) -> None:
    tally = Tally()
    with redis_servers(redis_url, prefix, count=1) as [(address, _)]:
        async with open_raw(address, 1) as ws:
            tally.take_welcome(await hello(ws))
            await send(address, "lobby", 3)
            await tally.read(ws, 3)
        redis_server.restart()  # Redis keeps nothing on disk: every history is gone
        closes = []
        async with asyncio.timeout(GUARD):
            while True:  # until the server's backend is back: meanwhile it says 1013
                try:
                    async with open_raw(address, 1) as ws:
                        welcome = await hello(ws, tally.positions)
                        break
                except ConnectionClosed as exc:
                    closes.append(exc.rcvd.code if exc.rcvd else None)
    assert set(closes) <= {1013}
    assert welcome["recovered"] is False
    assert welcome["channels"][GROUP]["reason"] == "epoch changed"


async def test_resumes_racing_publishes_through_redis_lose_and_repeat_nothing(
    redis_url: str, prefix: str, make: MakeRegistry
) -> None:
    """Publishes from another process keep going while a client resumes through two server
    processes in turn: every message exactly once, in order (the seam race, with Redis)."""
    publisher = await make(listen=False, history=HistoryLimits(size=5000, max_replay=5000))
    tally = Tally()
    published = 0
    resumes = 0
    with redis_servers(redis_url, prefix, ASGI_GROUPS_HISTORY="5000,300,5000") as servers:
        async with open_raw(servers[0][0], 3) as ws:
            tally.take_welcome(await hello(ws))

        async def publish() -> None:
            nonlocal published
            while resumes < 10 or published < 300:
                await publisher.send_group("lobby", {"n": published})
                published += 1

        task = asyncio.create_task(publish())
        try:
            while not task.done():
                async with open_raw(servers[resumes % 2][0], 3) as ws:
                    assert (await hello(ws, tally.positions))["recovered"] is True
                    resumes += 1
                    await tally.read(ws, 1)
        finally:
            await task
        async with open_raw(servers[0][0], 3) as ws:
            assert (await hello(ws, tally.positions))["recovered"] is True
            await tally.read(ws, published - len(tally.messages[GROUP]))
    assert tally.messages[GROUP] == [{"n": n} for n in range(published)]


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_five_second_cut_loses_nothing(backend: str, redis_url: str, prefix: str) -> None:
    """The client's TCP connection goes silent (not closed) for 5 s while 250 messages go to
    its group and 250 to it directly; it reconnects (with Redis, through the OTHER process)
    and has all 500, in order per channel, none twice, recovered."""
    env = {"ASGI_GROUPS_HISTORY": "500,300,500"}
    if backend == "redis":
        env.update(ASGI_GROUPS_REDIS_URL=redis_url, ASGI_GROUPS_PREFIX=prefix)
    count = 2 if backend == "redis" else 1
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(serve_process(APP, env=env))[0] for _ in range(count)]
        async with TcpProxy(servers[0]) as proxy:
            client = Client(
                f"ws://{proxy.address}/ws",
                headers={"Cookie": "session=1"},
                origin=f"http://{proxy.address}",
                min_delay=0.05,
                max_delay=0.5,
                ping_interval=0.5,
                ping_timeout=0.5,
            )
            async with client:
                first = await client.recovered()
                proxy.stall()  # packets stop; nothing is closed
                proxy.refusing = True  # and nothing new gets through for 5 s
                await send(servers[-1], "lobby", 250)
                await send_user(servers[-1], 1, 250)
                await asyncio.sleep(5)  # the length of the outage, not a synchronisation
                proxy.target = servers[-1]  # with Redis: back through the other process
                proxy.refusing = False
                again = await asyncio.wait_for(client.recovered(), GUARD)
                received: dict[str | None, list[Any]] = {}
                async with asyncio.timeout(GUARD):
                    while len(received.get(GROUP, [])) + len(received.get("u:1", [])) < 500:
                        message = await client.recv()
                        received.setdefault(message.channel, []).append(message.data)
    assert first.recovered is True
    assert again.recovered is True, again
    assert received[GROUP] == [{"n": n} for n in range(250)]
    assert received["u:1"] == [{"n": n} for n in range(250)]
