"""The core behind a real uvicorn server, with real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .core_app import Hub, make_app
from .support.rawclient import RawClient
from .support.servers import serve
from .support.waiting import wait_until


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Any]]:
    app, registry = make_app()
    Hub.disconnects.clear()
    async with registry, serve(app) as address:
        yield address, registry


def ws(address: str, user: int | None, origin: str | None = "same", **kw: Any) -> Any:
    headers = {"Cookie": f"session={user}"} if user is not None else {}
    if origin == "same":
        origin = f"http://{address}"
    return connect(f"ws://{address}/ws", origin=origin, additional_headers=headers, **kw)  # type: ignore[arg-type]


async def recv_json(conn: ClientConnection) -> Any:
    return json.loads(await asyncio.wait_for(conn.recv(), 5))


async def silent(conn: ClientConnection, timeout: float = 0.2) -> bool:
    try:
        await asyncio.wait_for(conn.recv(), timeout)
    except TimeoutError:
        return True
    return False


async def test_routing_tabs_and_exclude(server: tuple[str, Any]) -> None:
    address, registry = server
    async with (
        ws(address, 1) as greg,
        ws(address, 1) as greg2,
        ws(address, 2) as chuck,
        ws(address, 3) as amanda,
    ):
        await amanda.send(json.dumps({"op": "group", "group": "boys", "text": "hi boys"}))
        for c in (greg, greg2, chuck):
            assert await recv_json(c) == {"from": "amanda", "text": "hi boys"}
        assert await silent(amanda)

        await chuck.send(json.dumps({"op": "user", "user": 1, "text": "psst"}))
        assert await recv_json(greg) == {"from": "chuck", "text": "psst"}
        assert await recv_json(greg2) == {"from": "chuck", "text": "psst"}
        assert await silent(chuck) and await silent(amanda)

        await greg.send(json.dumps({"op": "all", "text": "everyone", "exclude_me": True}))
        for c in (greg2, chuck, amanda):
            assert await recv_json(c) == {"from": "greg", "text": "everyone"}
        assert await silent(greg)

        await greg2.send(json.dumps({"op": "leave", "group": "boys"}))
        assert await recv_json(greg2) == {"left": "boys"}
        await amanda.send(json.dumps({"op": "group", "group": "boys", "text": "again"}))
        assert await recv_json(greg) == {"from": "amanda", "text": "again"}
        assert await silent(greg2)
        assert await registry.presence("boys") == {"1": 1, "2": 1}
    await wait_until(lambda: registry.stats().connections == 0)
    assert registry.stats().groups == 0


async def test_on_disconnect_once_client_drop_server_close_and_error(
    server: tuple[str, Any],
) -> None:
    address, registry = server
    async with ws(address, 1):
        pass
    async with ws(address, 2) as chuck:
        await chuck.send(json.dumps({"op": "close", "code": 4000}))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(chuck.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    async with ws(address, 3) as amanda:
        await amanda.send(json.dumps({"op": "boom"}))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(amanda.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    await wait_until(lambda: len(Hub.disconnects) == 3)
    assert sorted(Hub.disconnects) == [("amanda", 1011), ("chuck", 4000), ("greg", 1000)]
    assert registry.stats().connections == 0


@pytest.mark.parametrize(
    ("origin", "expected"),
    [("same", 101), ("http://evil.example", 403), (None, 403), ("null", 403)],
)
async def test_origin_checked_before_accept(
    server: tuple[str, Any], origin: str | None, expected: int
) -> None:
    address, _registry = server
    if expected == 101:
        async with ws(address, 1, origin=origin) as c:
            await c.send(json.dumps({"op": "presence", "group": "boys"}))
            assert await recv_json(c) == {"presence": {"1": 1}}
        return
    with pytest.raises(InvalidStatus) as refused:
        async with ws(address, 1, origin=origin):
            pass
    assert refused.value.response.status_code == 403
    assert Hub.disconnects == []  # the view never ran


async def test_anonymous_refused_403(server: tuple[str, Any]) -> None:
    address, _ = server
    with pytest.raises(InvalidStatus) as refused:
        async with ws(address, None):
            pass
    assert refused.value.response.status_code == 403


async def test_oversized_frame_closes_1009_others_unaffected(server: tuple[str, Any]) -> None:
    address, _ = server
    async with ws(address, 1) as big, ws(address, 2) as other:
        await big.send("x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(big.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        await other.send(json.dumps({"op": "user", "user": 2, "text": "fine"}))
        assert await recv_json(other) == {"from": "chuck", "text": "fine"}


async def test_reader_that_never_reads_is_closed_1013_others_get_everything(
    server: tuple[str, Any],
) -> None:
    address, registry = server
    stuck = RawClient(address, origin=f"http://{address}", cookie="session=3")
    await stuck.connect()
    try:
        async with ws(address, 1) as fast, ws(address, 2) as sender:
            for c in (fast, sender):
                await c.send(json.dumps({"op": "join", "group": "room"}))
                assert await recv_json(c) == {"joined": "room"}
            await wait_until(lambda: len(registry.connections()) == 3)
            await registry.join(registry.connections(3)[0], "room")
            n, size = 600, 16384
            received: list[str] = []

            async def read_fast() -> None:
                while len(received) < n:
                    received.append(str(await fast.recv()).rsplit("|", 1)[1])

            reader = asyncio.create_task(read_fast())
            for i in range(n):  # paced: each message is sent once the previous one arrived
                await sender.send(json.dumps({"op": "blob", "group": "room", "size": size, "n": i}))
                assert str(await asyncio.wait_for(sender.recv(), 5)).endswith(f"|{i}")
            await asyncio.wait_for(reader, 20)
            assert received == [str(i) for i in range(n)]  # all of them, in order
            assert registry.stats().slow_closed == 1
            assert await registry.presence("room") == {"1": 1, "2": 1}
        frames = await stuck.read_all()
        assert stuck.close_code == 1013
        assert len(frames) < n  # it was cut off, not fed without bound
    finally:
        stuck.close()


async def test_json_encoded_once_for_every_socket(
    server: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dict sent to a group of three real sockets is serialised once, not once per socket."""
    import asgi_groups.frames as frames

    address, _ = server
    calls = 0
    real = frames.to_json

    def counting(obj: Any) -> bytes:
        nonlocal calls
        calls += 1
        return real(obj)

    async with (
        ws(address, 1) as greg,
        ws(address, 1) as greg2,
        ws(address, 2) as chuck,
        ws(address, 3) as amanda,
    ):
        monkeypatch.setattr(frames, "to_json", counting)
        await amanda.send(json.dumps({"op": "group", "group": "boys", "text": "once"}))
        for c in (greg, greg2, chuck):
            assert await recv_json(c) == {"from": "amanda", "text": "once"}
        assert calls == 1


async def test_no_leak_after_1000_connect_disconnect_cycles(server: tuple[str, Any]) -> None:
    """1,000 real sockets come and go (50 at a time): the registry ends empty, stats at zero."""
    address, registry = server

    async def cycle(user: int) -> None:
        async with ws(address, user) as conn:
            await conn.send(json.dumps({"op": "join", "group": "churn"}))
            assert await recv_json(conn) == {"joined": "churn"}

    for start in range(0, 1000, 50):
        await asyncio.gather(*(cycle(1 + (start + i) % 3) for i in range(50)))
    await wait_until(lambda: registry.stats().connections == 0)
    stats = registry.stats()
    assert (stats.connections, stats.users, stats.groups) == (0, 0, 0)
    assert registry.connections() == [] and await registry.presence("churn") == {}
