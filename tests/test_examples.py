"""The examples: the chat apps under their frameworks' own test clients and across processes
through Redis, and the three ways in (wrap a FastAPI app, Starlette routes, notify from outside).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart import Quart
from quart.testing.connections import WebsocketDisconnectError
from starlette.applications import Starlette
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from examples import fastapi_wrap, notify, notify_script, starlette_routes
from examples.chat import fastapi_app, quart_app, starlette_app
from examples.chat.common import ChatConfig

from .adapter_apps.common import recv_json, silent
from .support.servers import serve_process

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = {"origin": "http://testserver"}
SECRET = "examples-test-secret"


@pytest.fixture
def config(tmp_path: Path) -> ChatConfig:
    return ChatConfig(database_url=f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}", secret_key=SECRET)


#: What a chat socket says first: it speaks the recoverable protocol (docs/PROTOCOL.md).
HELLO = json.dumps({"type": "ag.hello"})


def chat_frames(text: str | bytes) -> list[dict[str, Any]]:
    """The frames of one WebSocket frame as the page sees them: the server may join several
    with "\\n", and a channel's message comes out of its envelope."""
    found = []
    for line in text.split("\n") if isinstance(text, str) else [text]:
        frame: dict[str, Any] = json.loads(line)
        if frame["type"] == "ag.message":
            data = frame["data"]
            frame = json.loads(data) if isinstance(data, str) else data
        found.append(frame)
    return found


#: Frames read from a socket and not yet asked for, per socket.
_unread: dict[Any, deque[dict[str, Any]]] = {}


def _take(sock: Any, kind: str) -> dict[str, Any] | None:
    """The first unread frame of type ``kind`` on ``sock``, dropping those before it."""
    unread = _unread.setdefault(sock, deque())
    while unread:
        frame = unread.popleft()
        if frame["type"] == kind:
            return frame
    return None


def frames(sock: Any, kind: str) -> dict[str, Any]:
    """The next frame of type ``kind`` on a test client's socket (skipping presence etc.)."""
    while (frame := _take(sock, kind)) is None:
        _unread[sock].extend(chat_frames(sock.receive_text()))
    return frame


async def next_of(sock: Any, kind: str) -> dict[str, Any]:
    """``frames`` for a websockets connection or a Quart test socket, within 10 s."""
    receive = sock.recv if hasattr(sock, "recv") else sock.receive
    async with asyncio.timeout(10):
        while (frame := _take(sock, kind)) is None:
            _unread[sock].extend(chat_frames(await receive()))
    return frame


# -- the chat apps, in process ------------------------------------------------------------------


@pytest.mark.parametrize("module", [fastapi_app, starlette_app], ids=["fastapi", "starlette"])
def test_chat_app_under_testclient(module: Any, config: ChatConfig) -> None:
    app: Starlette = module.create_app(config)
    with TestClient(app) as client:
        assert client.get("/", follow_redirects=False).headers["location"].endswith("/login")
        assert 'id="login-form"' in client.get("/login").text
        wrong = client.post("/login", json={"username": "greg", "password": "greg"})
        assert wrong.status_code == 401 and set(wrong.json()) == {"error"}
        cookies = {}
        for name in ("greg", "chuck"):
            client.cookies.clear()
            ok = client.post("/login", json={"username": name, "password": name.capitalize()})
            assert ok.json() == {"success": f"Welcome back, {name}"}
            cookies[name] = f"session={ok.cookies['session']}"  # SessionMiddleware's cookie
        client.cookies.clear()
        assert 'id="messages"' in client.get("/", headers={"cookie": cookies["greg"]}).text
        connect_ws = client.websocket_connect
        with (
            connect_ws("/ws", headers={**ORIGIN, "cookie": cookies["greg"]}) as greg,
            connect_ws("/ws", headers={**ORIGIN, "cookie": cookies["chuck"]}) as chuck,
        ):
            greg.send_text(HELLO)
            chuck.send_text(HELLO)
            assert frames(greg, "hello")["groups"] == ["boys"]
            frames(chuck, "hello")
            greg.send_json({"type": "Group", "group": "boys", "text": "hi"})
            got = frames(chuck, "group")
            assert (got["from"], got["text"]) == ("greg", "hi")
            as_chuck = {"cookie": cookies["chuck"]}
            bad = client.post("/announce", json={"text": ""}, headers=as_chuck)
            assert bad.status_code == 400 and "text" in bad.json()["error"]
            ok = client.post("/announce", json={"text": "from HTTP"}, headers=as_chuck)
            assert ok.status_code == 200
            for sock in (greg, chuck):
                got = frames(sock, "broadcast")
                assert (got["from"], got["text"]) == ("chuck", "from HTTP")
            client.post("/logout", headers={"cookie": cookies["greg"]})
            with pytest.raises(WebSocketDisconnect) as closed:
                frames(greg, "never")
            assert closed.value.code == 4401
        with pytest.raises(WebSocketDenialResponse) as refused:
            connect_ws("/ws", headers=ORIGIN).__enter__()
        assert refused.value.status_code == 403


async def test_chat_app_quart_under_its_test_client(config: ChatConfig) -> None:
    app: Quart = quart_app.create_app(config)
    async with app.test_app():
        anonymous = app.test_client()
        assert (await anonymous.get("/")).headers["location"].endswith("/login")
        wrong = await anonymous.post("/login", json={"username": "amanda", "password": "x"})
        assert wrong.status_code == 401
        clients = {}
        for name in ("amanda", "lisa"):
            clients[name] = client = app.test_client()
            ok = await client.post("/login", json={"username": name, "password": name.title()})
            assert await ok.get_json() == {"success": f"Welcome back, {name}"}
        assert 'id="messages"' in await (await clients["amanda"].get("/")).get_data(as_text=True)
        headers = {"Origin": "http://localhost"}
        async with (
            clients["amanda"].websocket("/ws", headers=headers) as amanda,
            clients["lisa"].websocket("/ws", headers=headers) as lisa,
        ):
            await amanda.send(HELLO)
            await lisa.send(HELLO)
            assert (await next_of(amanda, "hello"))["groups"] == ["girls"]
            await next_of(lisa, "hello")
            await amanda.send(json.dumps({"type": "Direct", "user_name": "lisa", "text": "psst"}))
            assert (await next_of(lisa, "direct"))["text"] == "psst"
            await clients["amanda"].post("/logout")
            with pytest.raises(WebsocketDisconnectError) as closed:
                await next_of(amanda, "never")
            assert closed.value.args[0] == 4401
        assert (await clients["amanda"].get("/")).status_code == 303  # the session is gone


async def test_chat_apps_share_redis_across_processes(redis_url: str, tmp_path: Path) -> None:
    """greg on a FastAPI process, chuck on a Starlette one: same Redis, same cookie, same DB."""
    env = {
        "CHAT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
        "CHAT_SECRET_KEY": SECRET,
        "CHAT_REDIS_URL": redis_url,
    }
    with (
        serve_process("examples.chat.fastapi_app:app", env=env) as (one, _),
        serve_process("examples.chat.starlette_app:app", env=env) as (two, _),
    ):
        cookies = {}
        for name, address in (("greg", one), ("chuck", two)):
            async with httpx.AsyncClient(base_url=f"http://{address}") as http:
                response = await http.post(
                    "/login", json={"username": name, "password": name.title()}
                )
                cookies[name] = f"session={response.cookies['session']}"

        def ws(address: str, cookie: str) -> Any:
            return connect(
                f"ws://{address}/ws",
                origin=f"http://{address}",  # type: ignore[arg-type]
                additional_headers={"Cookie": cookie},
            )

        async with ws(one, cookies["greg"]) as greg, ws(two, cookies["chuck"]) as chuck:
            await greg.send(HELLO)
            await chuck.send(HELLO)
            await next_of(greg, "hello")
            await next_of(chuck, "hello")
            await greg.send(json.dumps({"type": "Group", "group": "boys", "text": "across"}))
            got = await next_of(chuck, "group")
            assert (got["from"], got["text"]) == ("greg", "across")
            # chuck's cookie, minted by the Starlette process, logs him out on the FastAPI one
            async with httpx.AsyncClient(base_url=f"http://{one}") as http:
                await http.post("/logout", headers={"cookie": cookies["chuck"]})
            with pytest.raises(ConnectionClosed) as closed:
                await next_of(chuck, "never")
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


# -- the three ways in ---------------------------------------------------------------------------


def test_fastapi_wrap() -> None:
    app, registry = fastapi_wrap.app, fastapi_wrap.registry
    with TestClient(app) as client:
        assert app.state.started and registry.started  # the app's own lifespan still runs
        bad = client.post("/login", json={"username": "greg", "password": "nope"})
        assert bad.status_code == 401
        ok = client.post("/login", json={"username": "greg", "password": "Greg"})
        greg = {**ORIGIN, "cookie": f"session={ok.cookies['session']}"}
        client.cookies.clear()
        with (
            client.websocket_connect("/ws", headers=greg) as tab1,
            client.websocket_connect("/room", headers=greg) as tab2,
        ):
            assert tab1.receive_json() == {"hello": "greg", "groups": ["boys"]}
            tab2.send_text("from the view")
            tab1.send_text("from the handler")
            for tab in (tab1, tab2):
                assert tab.receive_json() == {"from": "greg", "text": "from the view"}
                assert tab.receive_json() == {"from": "greg", "text": "from the handler"}
        for path in ("/ws", "/room"):  # anonymous: 1008 from CurrentUser, 403 from the view
            with pytest.raises((WebSocketDisconnect, WebSocketDenialResponse)):
                client.websocket_connect(path, headers=ORIGIN).__enter__()
    assert not app.state.started and not registry.started


def test_starlette_routes() -> None:
    with TestClient(starlette_routes.app) as client:
        connect_ws = client.websocket_connect
        with (
            connect_ws("/ws", headers=ORIGIN) as lobby,
            connect_ws("/rooms/kitchen", headers=ORIGIN) as cook,
            connect_ws("/rooms/kitchen", headers=ORIGIN) as chef,
            connect_ws("/rooms/attic", headers=ORIGIN) as ghost,
        ):
            cook.send_text("dinner")
            for sock in (cook, chef):
                assert sock.receive_json() == {"room": "room:kitchen", "text": "dinner"}
            lobby.send_text("hello all")
            for sock in (lobby, cook, chef, ghost):
                assert sock.receive_json() == {"room": "lobby", "text": "hello all"}
            assert starlette_routes.registry.stats().connections == 4
        with pytest.raises(WebSocketDenialResponse):  # same origin only
            connect_ws("/ws", headers={"origin": "http://evil.example"}).__enter__()


def test_notify_from_an_http_handler_and_from_the_scripts_function(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(notify, "TOKEN", "t0ken")
    auth = {"authorization": "Bearer t0ken"}
    with TestClient(notify.app) as client:
        url = "/ws?topic=news&topic=alerts&topic=secret"
        with client.websocket_connect(url, headers=ORIGIN) as listener:
            assert listener.receive_json() == {"listening": ["news", "alerts"]}
            sent = client.post("/notify/news", json={"v": 1}, headers=auth)
            assert sent.status_code == 202
            assert listener.receive_json() == {"topic": "news", "data": {"v": 1}}
            assert client.post("/notify/news", json={}, headers={}).status_code == 401
            assert client.post("/notify/secret", json={}, headers=auth).status_code == 404
            assert client.post("/notify/news", content=b"{", headers=auth).status_code == 400
            # the script's function, given this process's registry (in memory, no Redis)
            portal = client.portal
            assert portal is not None
            portal.call(notify_script.notify, notify.registry, "alerts", [1, 2])
            assert listener.receive_json() == {"topic": "alerts", "data": [1, 2]}
        monkeypatch.setattr(notify, "TOKEN", "")
        assert client.post("/notify/news", json={}, headers=auth).status_code == 503


@pytest.fixture
def notify_server(redis_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    env = {"NOTIFY_REDIS_URL": redis_url, "NOTIFY_TOKEN": "t0ken"}
    with serve_process("examples.notify:app", env=env) as (address, _):
        yield address, env


async def test_notify_script_reaches_another_process_through_redis(
    notify_server: tuple[str, dict[str, str]],
) -> None:
    address, env = notify_server
    async with connect(
        f"ws://{address}/ws?topic=news",
        origin=f"http://{address}",  # type: ignore[arg-type]
    ) as listener:
        assert await recv_json(listener) == {"listening": ["news"]}
        script = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "examples.notify_script",
            "news",
            '{"v": 2}',
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(script.communicate(), 20)
        assert script.returncode == 0, out.decode()
        assert await recv_json(listener) == {"topic": "news", "data": {"v": 2}}
        assert await silent(listener)
    with pytest.raises(InvalidStatus):
        async with connect(f"ws://{address}/ws", origin="http://evil.example"):  # type: ignore[arg-type]
            pass


async def test_notify_script_needs_a_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_REDIS_URL", raising=False)
    with pytest.raises(SystemExit) as exited:
        await notify_script.main(["news", "1"])
    assert exited.value.code == 2
