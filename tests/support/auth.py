"""Clients of the auth examples (examples/auth/): how a credential rides on a socket, login
forms, the example socket's frames, and what a refused or expired socket looks like."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

__all__ = [
    "Carrier",
    "Login",
    "claims",
    "closed_by_server",
    "hello",
    "refusal",
    "tamper",
    "until_marker",
]

Kind = Literal["header", "query", "cookie"]
#: Seconds a frame the test waits for may take on a loaded machine.
FRAME_WAIT = 5.0


def tamper(value: str) -> str:
    """``value`` with its last characters changed: a signed cookie or a JWT that fails its
    signature check, still well-formed."""
    tail = "AAAA" if not value.endswith("AAAA") else "BBBB"
    return value[:-4] + tail


@dataclass(frozen=True)
class Carrier:
    """One credential and how it reaches the socket: the ``Authorization: Bearer`` header, a
    query parameter (``name``), or a cookie (``name``). Header and query tokens are explicit
    (the client may send no Origin); a cookie is sent with the site's own Origin."""

    kind: Kind
    value: str
    name: str = "access_token"

    @property
    def explicit(self) -> bool:
        return self.kind != "cookie"

    def tampered(self) -> Carrier:
        return replace(self, value=tamper(self.value))

    def connect(self, address: str, *, origin: bool | None = None, path: str = "/ws") -> Any:
        """A websockets ``connect``; ``origin`` None: only for a cookie (as a page sends it)."""
        url = f"ws://{address}{path}"
        headers: dict[str, str] = {}
        if self.kind == "header":
            headers["Authorization"] = f"Bearer {self.value}"
        elif self.kind == "query":
            url += f"?{self.name}={self.value}"
        else:
            headers["Cookie"] = f"{self.name}={self.value}"
        send_origin = not self.explicit if origin is None else origin
        options: dict[str, Any] = {"additional_headers": headers, "max_queue": None}
        if send_origin:
            options["origin"] = f"http://{address}"
        return connect(url, **options)


@dataclass(frozen=True)
class Login:
    """A login through an app's own route: the user's id and the credentials it got."""

    user_id: str
    carriers: tuple[Carrier, ...]


async def refusal(connecting: Any) -> int:
    """The HTTP status of a handshake the server refuses (fails if it accepts)."""
    with pytest.raises(InvalidStatus) as info:
        async with connecting:
            pass
    return int(info.value.response.status_code)


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), FRAME_WAIT))  # type: ignore[no-any-return]


async def hello(ws: ClientConnection) -> dict[str, Any]:
    """The example socket's first frame: who it recognised (``user``, ``id``, ``groups``)."""
    frame = await recv_json(ws)
    assert frame["type"] == "hello", frame
    return frame


async def until_marker(ws: ClientConnection, marker: str) -> dict[str, list[dict[str, Any]]]:
    """Every frame up to the direct message whose text is ``marker``, by type (the marker
    itself not counted): what a recipient got, counted."""
    received: dict[str, list[dict[str, Any]]] = {}
    while True:
        frame = await recv_json(ws)
        if frame.get("type") == "direct" and frame.get("text") == marker:
            return received
        received.setdefault(str(frame.get("type")), []).append(frame)


def claims(token: str) -> dict[str, Any]:
    """A JWT's claims, read but not verified (the server verifies)."""
    return jwt.decode(token, options={"verify_signature": False})


async def closed_by_server(ws: ClientConnection, within: float) -> tuple[int | None, float]:
    """Read until the server closes the socket, for at most ``within`` seconds: its close code,
    and the Unix time the close arrived."""
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    return (info.value.rcvd.code if info.value.rcvd else None), time.time()
