"""Test WebSocket views without a server: a client on asgiref's ``ApplicationCommunicator``.

async with WebSocketTestClient(app, "/ws", cookies={"session": value}) as ws:
    await ws.send_json({"type": "Group", "group": "boys", "text": "hi"})
    assert (await ws.receive_json())["text"] == "hi"
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from asgiref.testing import ApplicationCommunicator

from .types import ASGIApp, Message

__all__ = ["WebSocketTestClient"]


class WebSocketTestClient:
    """One simulated browser tab talking to an ASGI app.

    ``origin`` defaults to the app's own (``http://testserver``) so same-origin checks pass;
    pass ``origin=None`` to send none.
    """

    def __init__(
        self,
        app: ASGIApp,
        path: str = "/ws",
        *,
        headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
        cookies: Mapping[str, str] | None = None,
        origin: str | None = "http://testserver",
        host: str = "testserver",
        query_string: str = "",
        subprotocols: list[str] | None = None,
        timeout: float = 3.0,
    ) -> None:
        raw: list[tuple[bytes, bytes]] = [(b"host", host.encode())]
        if origin is not None:
            raw.append((b"origin", origin.encode()))
        if cookies:
            cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
            raw.append((b"cookie", cookie.encode("latin-1")))
        items = headers.items() if isinstance(headers, Mapping) else (headers or [])
        raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in items)
        self.scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "scheme": "ws",
            "server": ("testserver", 80),
            "client": ("127.0.0.1", 50000),
            "root_path": "",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query_string.encode(),
            "headers": raw,
            "subprotocols": subprotocols or [],
            "extensions": {"websocket.http.response": {}},
        }
        self.timeout = timeout
        self._communicator = ApplicationCommunicator(app, self.scope)
        self.accepted = False
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.status: int | None = None
        self.subprotocol: str | None = None

    async def connect(self) -> bool:
        """Open the socket: True if accepted, else ``status`` (e.g. 403) says why."""
        await self._communicator.send_input({"type": "websocket.connect"})
        message = await self._output()
        kind = message["type"]
        if kind == "websocket.accept":
            self.accepted = True
            self.subprotocol = message.get("subprotocol")
            return True
        if kind == "websocket.close":
            self.status = 403
            self.close_code = message.get("code", 1000)
        elif kind == "websocket.http.response.start":
            self.status = int(message["status"])
            await self._output()
        else:
            raise AssertionError(f"unexpected handshake reply {message!r}")
        await self._communicator.wait(self.timeout)
        return False

    async def send_text(self, text: str) -> None:
        await self._communicator.send_input({"type": "websocket.receive", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        await self._communicator.send_input({"type": "websocket.receive", "bytes": data})

    async def send_json(self, data: Any) -> None:
        await self.send_text(json.dumps(data))

    async def receive(self) -> Message:
        """The next frame or close event the app sent."""
        message = await self._output()
        if message["type"] == "websocket.close":
            self.close_code = int(message.get("code", 1000))
            self.close_reason = str(message.get("reason", "") or "")
            await self._communicator.send_input(
                {"type": "websocket.disconnect", "code": self.close_code}
            )
        return message

    async def receive_text(self) -> str:
        message = await self.receive()
        if message["type"] != "websocket.send" or message.get("text") is None:
            raise AssertionError(f"expected a text frame, got {message!r}")
        return str(message["text"])

    async def receive_bytes(self) -> bytes:
        message = await self.receive()
        if message["type"] != "websocket.send" or message.get("bytes") is None:
            raise AssertionError(f"expected a binary frame, got {message!r}")
        return bytes(message["bytes"])

    async def receive_json(self) -> Any:
        return json.loads(await self.receive_text())

    async def receive_close(self) -> int:
        """Wait for the app to close the socket; returns the close code."""
        message = await self.receive()
        if message["type"] != "websocket.close":
            raise AssertionError(f"expected a close, got {message!r}")
        return int(message.get("code", 1000))

    async def receive_nothing(self, timeout: float = 0.1) -> bool:
        """True when the app sent nothing within ``timeout`` seconds."""
        return bool(await self._communicator.receive_nothing(timeout))

    async def disconnect(self, code: int = 1000) -> None:
        """Close from the client side and wait for the app to finish."""
        await self._communicator.send_input({"type": "websocket.disconnect", "code": code})
        await self._communicator.wait(self.timeout)

    async def _output(self) -> Message:
        try:
            message: Message = await self._communicator.receive_output(self.timeout)
            return message
        except TimeoutError:
            raise AssertionError(f"no message from the app within {self.timeout}s") from None

    async def __aenter__(self) -> WebSocketTestClient:
        if not await self.connect():
            raise AssertionError(f"handshake refused (status {self.status})")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.close_code is None:
            await self.disconnect()
        else:
            await self._communicator.wait(self.timeout)
