"""Hostile inbound frames over a real uvicorn server: malformed, forbidden, oversized, not UTF-8.

Each attack hits one socket; the others must not notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from asgi_groups import GroupsMiddleware, InMemoryUsers, Registry, SimpleUser, codes
from asgi_groups.limits import KiB, MiB
from asgi_groups.messaging import (
    BroadcastIn,
    DirectIn,
    GroupIn,
    InboundMessage,
    MessagingView,
    StaticDirectory,
)
from asgi_groups.types import Receive, Scope, Send

from .support.codecs import PlainCookie
from .support.hostile import debug, malformed_frames
from .support.rawclient import RawClient
from .support.servers import serve, serve_process
from .support.waiting import wait_until

PEOPLE = [
    SimpleUser(1, "greg", frozenset({"boys"})),
    SimpleUser(2, "chuck", frozenset({"boys"})),
    SimpleUser(3, "amanda", frozenset({"girls"})),
    SimpleUser(4, "lisa", frozenset({"girls"})),
]
IDS = {u.username: u.id for u in PEOPLE}


class Quiet(MessagingView):
    """The library's default limits; no presence frames, so tests see only what they cause."""

    announce_presence = False


class Tolerant(Quiet):
    """The error budget and rate limit lifted, frames up to 256 KiB: every bad frame counts."""

    error_budget = None
    rate_limit = None
    user_rate_limit = None
    max_message_size = 256 * KiB


class Guarded(Quiet):
    """Girls may broadcast and write to girls; boys may not write to girls at all."""

    async def authorize(self, message: InboundMessage) -> bool:
        girl = "girls" in self.user.groups
        if isinstance(message, BroadcastIn):
            return girl
        if isinstance(message, GroupIn) and message.group == "girls":
            return girl
        if isinstance(message, DirectIn) and message.user_name.casefold() in ("amanda", "lisa"):
            return girl
        return True


@dataclass
class Site:
    address: str
    registry: Registry

    def ws(self, name: str, path: str) -> Any:
        return connect(
            f"ws://{self.address}{path}",
            origin=f"http://{self.address}",  # type: ignore[arg-type]
            additional_headers={"Cookie": f"session={IDS[name]}"},
        )


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    registry = Registry()
    views = {
        path: view.as_asgi(directory=StaticDirectory(PEOPLE))
        for path, view in (("/default", Quiet), ("/tolerant", Tolerant), ("/guarded", Guarded))
    }

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        await views[scope["path"]](scope, receive, send)

    app = GroupsMiddleware(router, registry, sessions=PlainCookie(), users=InMemoryUsers(PEOPLE))
    async with registry, serve(app) as address:
        yield Site(address, registry)


async def frame(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    data = await asyncio.wait_for(ws.recv(), timeout)
    body: dict[str, Any] = json.loads(data)
    return body


async def hello(ws: ClientConnection) -> None:
    assert (await frame(ws))["type"] == "hello"


async def test_a_thousand_malformed_frames_one_error_each_over_a_real_server(site: Site) -> None:
    """1,000 malformed frames (bad JSON, wrong schema and types, huge numbers, deep nesting,
    invalid UTF-8 in binary frames) get exactly one error frame each, in order, and the socket
    stays open; another client notices nothing."""
    frames = malformed_frames()
    async with site.ws("greg", "/tolerant") as greg, site.ws("chuck", "/tolerant") as chuck:
        await hello(greg)
        await hello(chuck)

        async def pour() -> None:
            for raw, _ in frames:
                await greg.send(raw)

        sender = asyncio.create_task(pour())
        for i, (raw, code) in enumerate(frames):
            error = await frame(greg)
            assert error["type"] == "error" and error["error"] == code, (i, raw[:40], error)
        await sender
        await greg.send(json.dumps({"type": "Group", "group": "boys", "text": "after 1000"}))
        for ws in (greg, chuck):  # the next frame each sees is this message
            assert (await frame(ws))["text"] == "after 1000"
        assert site.registry.stats().connections == 2


async def test_default_error_budget_closes_4408_others_keep_flowing(site: Site) -> None:
    """With the default budget (30 a minute) the 31st malformed frame gets its error frame and
    a 4408 close; frames after it are ignored; meanwhile other users' messages all arrive."""
    budget = Quiet.error_budget
    assert budget == 30
    async with (
        site.ws("greg", "/default") as greg,
        site.ws("chuck", "/default") as chuck,
        site.ws("amanda", "/default") as amanda,
    ):
        for ws in (greg, chuck, amanda):
            await hello(ws)

        async def attack() -> None:
            for i in range(100):
                try:
                    await greg.send(b"\xff\xfe" if i % 2 else "{oops")
                except ConnectionClosed:
                    return

        async def talk() -> None:
            for i in range(20):
                message = {"type": "Direct", "user_name": "amanda", "text": f"m{i}"}
                await chuck.send(json.dumps(message))

        attacker, talker = asyncio.create_task(attack()), asyncio.create_task(talk())
        errors = 0
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                assert (await frame(greg))["type"] == "error"
                errors += 1
        assert closed.value.rcvd is not None and closed.value.rcvd.code == codes.TOO_MANY_ERRORS
        assert errors == budget + 1
        await asyncio.gather(attacker, talker)
        await chuck.send(json.dumps({"type": "Group", "group": "girls", "text": "after"}))
        for ws in (amanda, chuck):  # the recipient, and the sender's copy
            received = [(await frame(ws))["text"] for _ in range(21)]
            assert received == [*(f"m{i}" for i in range(20)), "after"]
        await wait_until(lambda: site.registry.stats().connections == 2)


async def test_forbidden_messages_are_delivered_nowhere(site: Site) -> None:
    """A message ``authorize`` refuses gets one ``forbidden`` error frame on the sending tab
    and reaches no one: every client's next message is a later, allowed one."""
    async with (
        site.ws("greg", "/guarded") as greg,
        site.ws("greg", "/guarded") as greg2,
        site.ws("chuck", "/guarded") as chuck,
        site.ws("amanda", "/guarded") as amanda,
        site.ws("lisa", "/guarded") as lisa,
    ):
        everyone = (greg, greg2, chuck, amanda, lisa)
        for ws in everyone:
            await hello(ws)
        forbidden = [
            {"type": "BroadCast", "text": "to all"},
            {"type": "Group", "group": "girls", "text": "to the girls"},
            {"type": "Direct", "user_name": "Amanda", "text": "to amanda"},
        ]
        for message in forbidden:
            await greg.send(json.dumps(message))
            assert await frame(greg) == {
                "type": "error",
                "error": "forbidden",
                "detail": "you may not send this message",
            }
        await amanda.send(json.dumps({"type": "BroadCast", "text": "marker"}))
        for ws in everyone:
            got = await frame(ws)
            assert (got["type"], got["from"], got["text"]) == ("broadcast", "amanda", "marker")
        await greg.send(json.dumps({"type": "Group", "group": "boys", "text": "boys only"}))
        for ws in (greg, greg2, chuck):
            assert (await frame(ws))["text"] == "boys only"
        await lisa.send(json.dumps({"type": "Group", "group": "girls", "text": "girls only"}))
        for ws in (amanda, lisa):  # and the boys' copy never came to the girls
            assert (await frame(ws))["text"] == "girls only"


# -- oversized and invalid frames against a server process ------------------------------------


@dataclass
class Probe:
    address: str
    pid: int
    proc: Any

    def ws(self, user: int, path: str = "/ws") -> Any:
        return connect(
            f"ws://{self.address}{path}",
            origin=f"http://{self.address}",  # type: ignore[arg-type]
            additional_headers={"Cookie": f"session={user}"},
            compression=None,  # sizes on the wire are the sizes sent
            max_size=None,
        )


@pytest.fixture(scope="module")
def probe() -> Iterator[Probe]:
    """The probe app in its own process, with uvicorn's default ``ws_max_size`` (16 MiB)."""
    with serve_process("tests.support.probe_app:app", env={"PROBE_PRESENCE": "0"}) as (
        address,
        proc,
    ):
        yield Probe(address, proc.pid, proc)


async def echo(ws: ClientConnection, user: int, text: str) -> None:
    """A direct message to oneself comes back: the socket and the server work."""
    await ws.send(json.dumps({"type": "Direct", "user_name": f"user{user}", "text": text}))
    async with asyncio.timeout(5):
        while (body := json.loads(await ws.recv()))["type"] != "direct":
            pass
    assert body["text"] == text


async def closed_by_server(ws: ClientConnection) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(10):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None, "no close frame from the server"
    return closed.value.rcvd.code


@pytest.mark.parametrize(
    ("path", "payload", "code"),
    [
        pytest.param("/ws", "x" * (64 * KiB + 1), 1009, id="view-limit-text"),
        pytest.param("/ws", b"\x00" * (64 * KiB + 1), 1009, id="view-limit-binary"),
        pytest.param("/ws", "é" * (32 * KiB + 1), 1009, id="view-limit-utf8-bytes"),
        pytest.param("/ws-unlimited", b"\x00" * (16 * MiB + 1), 1009, id="server-ws-max-size"),
    ],
)
async def test_oversized_frame_closes_1009_others_unaffected(
    probe: Probe, path: str, payload: str | bytes, code: int
) -> None:
    """A frame over the view's ``max_message_size`` (64 KiB) or over uvicorn's ``ws_max_size``
    (16 MiB) closes that socket with 1009; the server process and another client carry on,
    and the closed socket leaves the registry."""
    async with probe.ws(2) as bystander:
        await echo(bystander, 2, "before")
        async with probe.ws(1, path) as attacker:
            await echo(attacker, 1, "hello")
            with contextlib.suppress(ConnectionClosed):  # the server may hang up mid-frame
                await attacker.send(payload)
            assert await closed_by_server(attacker) == code
        assert probe.proc.poll() is None
        await echo(bystander, 2, "after")
        state = await debug(probe.address)
        assert state["connections"] == 1


async def test_invalid_utf8_text_frame_closes_1007_others_unaffected(probe: Probe) -> None:
    """A text frame that is not UTF-8 is a protocol error: the server closes that socket with
    1007; another client carries on."""
    async with probe.ws(2) as bystander:
        await echo(bystander, 2, "before")
        raw = RawClient(probe.address, origin=f"http://{probe.address}", cookie="session=1")
        await raw.connect()
        try:
            raw.protocol.send_frame(Frame(Opcode.TEXT, b'{"type": "\xff"}'))
            await raw.flush()
            await raw.read_all(timeout=10)
            assert raw.close_code == 1007
        finally:
            raw.close()
        await echo(bystander, 2, "after")
        assert probe.proc.poll() is None
