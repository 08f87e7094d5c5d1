"""A chat example app seen from a browser: log in over HTTP, open tabs, read JSON frames.

The chat socket speaks the recoverable protocol (docs/PROTOCOL.md): a tab says ``ag.hello``
first (with the positions it saw, when it comes back), and group, direct and broadcast messages
and presence arrive inside ``ag.message`` envelopes, which a tab opens.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from .servers import free_port, stop_process, wait_for_port

#: The frame types a chat user sees (presence and hello are kept aside).
CHAT = frozenset({"broadcast", "group", "direct", "error"})


class Site:
    """One running chat app: logs users in over HTTP and opens their WebSockets."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.base = f"http://{address}"
        self._cookies: dict[str, str] = {}

    async def login(self, username: str, password: str | None = None) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.base) as client:
            password = password if password is not None else username.capitalize()
            return await client.post("/login", json={"username": username, "password": password})

    async def cookie(self, username: str, *, fresh: bool = False) -> str:
        """The Cookie header of a logged-in browser (cached: logging in costs a password hash)."""
        if fresh or username not in self._cookies:
            response = await self.login(username)
            assert response.status_code == 200, response.text
            jar = response.cookies
            assert jar, "the login response set no cookie"
            self._cookies[username] = "; ".join(f"{k}={v}" for k, v in jar.items())
        return self._cookies[username]

    def ws(self, cookie: str | None, origin: str | None = "same") -> Any:
        headers = {"Cookie": cookie} if cookie else {}
        return connect(
            f"ws://{self.address}/ws",
            origin=self.base if origin == "same" else origin,  # type: ignore[arg-type]
            additional_headers=headers,
            open_timeout=5,
        )

    async def tab(self, username: str, positions: dict[str, Any] | None = None) -> Tab:
        """A tab of ``username``, welcomed; ``positions`` (``Tab.positions`` of a closed tab)
        resumes where that tab was."""
        conn = await self.ws(await self.cookie(username))
        tab = Tab(conn, positions)
        hello = await tab.next({"hello"})
        assert hello["user"] == username
        tab.welcome = await tab.next({"ag.welcome"})
        return tab


class Tab:
    """A browser tab's socket: JSON frames (one per line), envelopes opened, presence kept
    aside, and the position seen per channel."""

    def __init__(self, conn: ClientConnection, positions: dict[str, Any] | None = None) -> None:
        self.conn = conn
        self.buffer: deque[dict[str, Any]] = deque()
        self.presence: dict[str, list[str]] = {}
        self.positions: dict[str, Any] = dict(positions or {})
        self.welcome: dict[str, Any] | None = None
        self._greeted = False

    async def greet(self) -> None:
        """Say ``ag.hello`` (once, before anything else), with the positions the tab holds."""
        if not self._greeted:
            self._greeted = True
            await self.conn.send(json.dumps({"type": "ag.hello", "positions": self.positions}))

    async def pull(self, timeout: float) -> None:
        """Read one WebSocket frame into the buffer (presence frames also update ``presence``)."""
        await self.greet()
        data = await asyncio.wait_for(self.conn.recv(), timeout)
        assert isinstance(data, str), "the chat protocol is text frames only"
        for line in data.split("\n"):
            if line.strip():
                frame = self._open(json.loads(line))
                if frame.get("type") == "presence":
                    self.presence[frame["group"]] = frame["users"]
                self.buffer.append(frame)

    def _open(self, frame: dict[str, Any]) -> dict[str, Any]:
        """The chat message inside an ``ag.message`` (its position noted); others as they are."""
        if frame.get("type") == "ag.welcome":
            for channel, status in frame["channels"].items():
                if "epoch" in status:
                    self.positions[channel] = {"epoch": status["epoch"], "offset": status["offset"]}
        if frame.get("type") != "ag.message":
            return frame
        if "epoch" in frame:
            self.positions[frame["channel"]] = {"epoch": frame["epoch"], "offset": frame["offset"]}
        data = frame["data"]
        message: dict[str, Any] = json.loads(data) if isinstance(data, str) else data
        return message

    async def next(self, kinds: frozenset[str] | set[str] = CHAT, timeout: float = 5.0) -> Any:
        """The next frame of one of ``kinds``, skipping others (presence, hello)."""
        async with asyncio.timeout(timeout):
            while True:
                while self.buffer:
                    frame = self.buffer.popleft()
                    if frame.get("type") in kinds:
                        return frame
                await self.pull(timeout)

    async def quiet(self, timeout: float = 0.3) -> bool:
        """True when no chat message or error arrives within ``timeout``."""
        try:
            frame = await self.next(CHAT, timeout)
        except TimeoutError:
            return True
        pytest.fail(f"unexpected frame {frame!r}")

    @staticmethod
    async def all_quiet(tabs: list[Tab], timeout: float = 0.3) -> bool:
        """True when none of ``tabs`` gets a chat message or error within ``timeout``."""
        return all(await asyncio.gather(*(tab.quiet(timeout) for tab in tabs)))

    async def send(self, message: Any) -> None:
        await self.greet()
        await self.conn.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def close(self) -> None:
        await self.conn.close()


class ChatProcess:
    """A chat app under uvicorn in a child process that can be stopped (SIGTERM, as a deploy
    does) and started again on the same port, so that open pages come back to it."""

    def __init__(self, target: str, env: Mapping[str, str]) -> None:
        self.target = target
        self.port = free_port()
        self.env = dict(os.environ)
        self.env.update(env)
        root = str(Path(__file__).resolve().parents[2])
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH")) if p
        )
        self.proc: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"http://{self.address}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "uvicorn", self.target, "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--log-level", "warning"]
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        """SIGTERM, and wait until it has exited (its sockets closed with 1012)."""
        proc, self.proc = self.proc, None
        stop_process(proc)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def chat_process(target: str, env: Mapping[str, str]) -> Iterator[ChatProcess]:
    """A started ``ChatProcess``, stopped on exit."""
    server = ChatProcess(target, env)
    server.start()
    try:
        yield server
    finally:
        server.stop()
