"""A chat example app seen from a browser: log in over HTTP, open tabs, read JSON frames."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

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

    async def tab(self, username: str) -> Tab:
        conn = await self.ws(await self.cookie(username))
        tab = Tab(conn)
        hello = await tab.next({"hello"})
        assert hello["user"] == username
        return tab


class Tab:
    """A browser tab's socket: JSON frames (one per line), presence kept aside."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.buffer: deque[dict[str, Any]] = deque()
        self.presence: dict[str, list[str]] = {}

    async def pull(self, timeout: float) -> None:
        """Read one WebSocket frame into the buffer (presence frames also update ``presence``)."""
        data = await asyncio.wait_for(self.conn.recv(), timeout)
        assert isinstance(data, str), "the chat protocol is text frames only"
        for line in data.split("\n"):
            if line.strip():
                frame = json.loads(line)
                if frame.get("type") == "presence":
                    self.presence[frame["group"]] = frame["users"]
                self.buffer.append(frame)

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
        await self.conn.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def close(self) -> None:
        await self.conn.close()
