"""A refused handshake is a normal event: every server answers the client's HTTP status and none
logs an ERROR for it, while an app that really forgets its handshake still gets uvicorn's ERROR."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from asgi_groups.types import Receive, Scope, Send

from .core_app import make_app
from .support.servers import free_port, stop_process, wait_for_port

_groups_app, _ = make_app()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/ws``: the library's view (refuses strangers); ``/raw``: returns without a handshake."""
    if scope["type"] == "websocket" and scope["path"] == "/raw":
        return
    await _groups_app(scope, receive, send)


SERVERS = {
    "uvicorn-websockets-sansio": ["uvicorn", "--ws", "websockets-sansio"],
    "uvicorn-wsproto": ["uvicorn", "--ws", "wsproto"],
    "hypercorn": ["hypercorn"],
    "granian": ["granian"],
}


def command(kind: str, port: int) -> list[str]:
    name, *options = SERVERS[kind]
    target = "tests.test_quiet_refusals:app"
    if name == "uvicorn":
        args = [target, "--host", "127.0.0.1", "--port", str(port), *options]
    elif name == "hypercorn":
        args = [target, "--bind", f"127.0.0.1:{port}"]
    else:
        args = ["--interface", "asgi", "--host", "127.0.0.1", "--port", str(port), target]
    return [sys.executable, "-m", name, *args]


async def status_of(url: str, **options: object) -> int:
    """The HTTP status a refused handshake got (a test failure if it was accepted)."""
    try:
        async with websockets.connect(url, open_timeout=10, **options):  # type: ignore[arg-type]
            pass
    except InvalidStatus as exc:
        return exc.response.status_code
    raise AssertionError(f"{url} accepted the handshake")


@contextlib.contextmanager
def running(kind: str, log_path: Path) -> Iterator[int]:
    """The app under server ``kind`` on a free port, its output in ``log_path``; stopped after."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command(kind, port), env=env, stdout=log, stderr=log, text=True)
    try:
        wait_for_port(port, proc=proc)
        yield port
    finally:
        stop_process(proc)


@pytest.mark.parametrize("kind", list(SERVERS))
async def test_refusals_are_answered_and_not_logged_as_errors(kind: str, tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    with running(kind, log_path) as port:
        base = f"ws://127.0.0.1:{port}"
        same = f"http://127.0.0.1:{port}"
        # no session cookie (login required), a forged one, a foreign Origin
        assert await status_of(f"{base}/ws", origin=same) == 403
        assert (
            await status_of(f"{base}/ws", origin=same, additional_headers={"Cookie": "session=x"})
            == 403
        )
        assert (
            await status_of(
                f"{base}/ws",
                origin="http://evil.example",
                additional_headers={"Cookie": "session=1"},
            )
            == 403
        )
        # the same server still serves a welcome socket
        async with websockets.connect(
            f"{base}/ws", origin=same, additional_headers={"Cookie": "session=1"}
        ) as ws:
            await ws.send('{"op": "user", "user": 1, "text": "hi"}')
            assert "hi" in str(await asyncio.wait_for(ws.recv(), 10))
        if kind.startswith("uvicorn"):
            await status_of(f"{base}/raw")  # a real bug in an app: uvicorn must still say so
    logged = log_path.read_text()
    lines = [line for line in logged.splitlines() if "ERROR" in line or "Traceback" in line]
    if kind.startswith("uvicorn"):
        assert lines == ["ERROR:    ASGI callable returned without completing handshake."], logged
        assert logged.count('"WebSocket /ws" 403') == 3, logged
    else:
        assert lines == [], logged
