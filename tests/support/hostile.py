"""Hostile-client tools: raw handshakes, pre-built floods, a server process seen from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx
from websockets.frames import Frame, Opcode

from .rawclient import RawClient


async def handshake_status(
    address: str, headers: Mapping[str, str] | Iterable[tuple[str, str]], path: str = "/ws"
) -> int:
    """Send a WebSocket upgrade request with exactly ``headers`` (raw bytes, nothing added
    but the upgrade headers) and return the HTTP status the server answers."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    items = headers.items() if isinstance(headers, Mapping) else headers
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {address}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in items),
    ]
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        async with asyncio.timeout(5):
            status_line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise AssertionError(f"not an HTTP response: {status_line!r}")
    return int(parts[1])


def masked_frames(payloads: Iterable[str | bytes]) -> bytes:
    """Client frames (masked, as a browser sends them), built once and sent many times."""
    chunks = []
    for payload in payloads:
        if isinstance(payload, str):
            frame = Frame(Opcode.TEXT, payload.encode("utf-8"))
        else:
            frame = Frame(Opcode.BINARY, payload)
        chunks.append(frame.serialize(mask=True))
    return b"".join(chunks)


class FloodClient(RawClient):
    """A client that writes pre-built frames as fast as the socket takes them and never
    answers the server's close: it only reads, until the close frame arrives."""

    def __init__(self, address: str, path: str = "/ws", *, origin: str, cookie: str = ""):
        super().__init__(address, path, origin=origin, cookie=cookie)
        self.sent = 0

    async def flood(self, blob: bytes, until: asyncio.Event) -> None:
        """Write ``blob`` again and again until ``until`` is set or the server hangs up."""
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while not until.is_set():
                await loop.sock_sendall(self.sock, blob)
                self.sent += len(blob)

    async def read_until_close(self, timeout: float = 10.0) -> list[Frame]:
        """Data frames received before the close frame (its code is in ``close_code``)."""
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while self.close_code is None:
                data = await loop.sock_recv(self.sock, 65536)
                if not data:
                    self.protocol.receive_eof()
                    self._events()
                    break
                self.protocol.receive_data(data)
                self._events()  # parse only: a hostile client does not answer the close
        return [f for f in self.frames if f.opcode in (Opcode.TEXT, Opcode.BINARY)]


# -- a server process seen from outside ------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid``, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    """Number of file descriptors process ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


async def debug(address: str) -> dict[str, Any]:
    """The ``/debug`` counters of a ``tests.support.probe_app`` server."""
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as client:
        response = await client.get("/debug")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


def chat(kind: str, text: str, **fields: Any) -> str:
    """One inbound chat-protocol message, as JSON text."""
    return json.dumps({"type": kind, "text": text, **fields})


def malformed_frames() -> list[tuple[str | bytes, str]]:
    """A thousand hostile frames, each worth exactly one error frame."""
    kinds: list[Callable[[int], tuple[str | bytes, str]]] = [
        lambda i: ("{" * (i % 7 + 1), "invalid_json"),
        lambda i: (f'{{"type": "Group", "text": "t{i}"', "invalid_json"),
        lambda i: ("'" + "x" * i + "'", "invalid_json"),
        lambda i: (bytes([0xC0 + i % 64, 0x20]) + b"{}", "invalid_utf8"),
        lambda i: (b"\xff" * (i % 5 + 1), "invalid_utf8"),
        lambda i: (json.dumps([i, "Group"]), "invalid_message"),
        lambda i: (json.dumps({"type": f"T{i}", "text": "x"}), "invalid_message"),
        lambda i: (json.dumps({"type": "Group", "text": i, "group": "boys"}), "invalid_message"),
        lambda i: (
            json.dumps({"type": "Direct", "text": "x", "user_name": [i]}),
            "invalid_message",
        ),
        lambda i: (
            json.dumps({"type": "Group", "text": {"x": i}, "group": "boys"}),
            "invalid_message",
        ),
        lambda i: ('{"type": "BroadCast", "text": 1e400}', "invalid_message"),
        lambda i: ('{"type": "BroadCast", "text": ' + "1" * 5000 + "}", "invalid_message"),
        lambda i: ("[" * 100_000 + "]" * 100_000, "invalid_message"),
        lambda i: ('{"a":' * 1000 + "1" + "}" * 1000, "invalid_message"),
        lambda i: (json.dumps({"type": "BroadCast", "text": "x" * (4097 + i)}), "text_too_long"),
    ]
    return [kinds[i % len(kinds)](i) for i in range(1000)]
