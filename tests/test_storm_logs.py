"""A reconnect storm of clients that leave mid-handshake leaves no ERROR and no traceback in the
server's log (opt-in: ``pytest -m soak tests/test_storm_logs.py``).

3,000 WebSocket handshakes with a valid session cookie against the chat example under uvicorn:
a third close their TCP connection (RST) right after sending the request, a third once the
``101`` arrived, a third after the first frame. The server's whole output is kept in a file.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from .support.chat import Site
from .support.servers import free_port, wait_for_port

pytestmark = pytest.mark.soak

APP = "examples.chat.starlette_app:app"
ROOT = str(Path(__file__).resolve().parents[1])
STORM = 3000
AT_ONCE = 300


def request(address: str, cookie: str, n: int) -> bytes:
    key = base64.b64encode(n.to_bytes(16, "big")).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: http://{address}\r\nCookie: {cookie}\r\n\r\n"
    ).encode()


async def leave(address: str, cookie: str, n: int, gate: asyncio.Semaphore) -> str:
    """One client of the storm; returns how far it got before it reset the connection."""
    host, port = address.split(":")
    async with gate:
        reader, writer = await asyncio.open_connection(host, int(port))
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        try:
            writer.write(request(address, cookie, n))
            await writer.drain()
            if n % 3 == 0:
                return "sent"
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            if n % 3 == 1 or not head.startswith(b"HTTP/1.1 101"):
                return "101" if head.startswith(b"HTTP/1.1 101") else "refused"
            await asyncio.wait_for(reader.read(2), 30)
            return "frame"
        finally:
            writer.transport.abort()


async def test_a_storm_of_clients_leaving_mid_handshake_logs_no_error(tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        CHAT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'chat.sqlite3'}",
        CHAT_SECRET_KEY="storm-test-secret-key-0123456789",
        CHAT_REDIS_URL="",
        PYTHONPATH=os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p),
    )
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the storm
            [sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port, proc=proc)
            site = Site(address)
            cookie = await site.cookie("greg")
            gate = asyncio.Semaphore(AT_ONCE)
            outcomes = await asyncio.gather(
                *(leave(address, cookie, n, gate) for n in range(STORM)), return_exceptions=True
            )
            # the server is still serving: a whole tab works after the storm
            tab = await site.tab("chuck")
            await tab.close()
        finally:
            proc.terminate()
            proc.wait(30)
    text = log.read_text()
    got = [o if isinstance(o, str) else type(o).__name__ for o in outcomes]
    assert got.count("sent") == STORM // 3, got
    assert got.count("101") + got.count("frame") >= STORM // 2, sorted(set(got))
    errors = [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line]
    assert errors == [], "\n".join(errors[:20])
