"""``ClientScript``: an ASGI app serving the browser client, ``asgi-groups.js``, or its types."""

from __future__ import annotations

import hashlib
from pathlib import Path

from . import codes
from .types import Receive, Scope, Send

__all__ = ["STATIC", "ClientScript"]

STATIC = Path(__file__).resolve().parent / "static"

JS = ("asgi-groups.js", b"text/javascript; charset=utf-8")
TYPES = ("asgi-groups.d.ts", b"application/typescript; charset=utf-8")


class ClientScript:
    """Serves ``asgi-groups.js`` (with ``types=True``: ``asgi-groups.d.ts``) on GET and HEAD.

    The file is read once; browsers revalidate it (``no-cache``) and get a 304 while its ETag holds.
    """

    def __init__(self, types: bool = False) -> None:
        name, self.content_type = TYPES if types else JS
        self.body = (STATIC / name).read_bytes()
        self.etag = b'"' + hashlib.sha256(self.body).hexdigest()[:32].encode() + b'"'

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] != "http":
            await send({"type": "websocket.close", "code": codes.POLICY_VIOLATION})
        elif scope["method"] not in ("GET", "HEAD"):
            headers = [(b"allow", b"GET, HEAD"), (b"content-type", b"text/plain; charset=utf-8")]
            await _respond(send, 405, headers, b"method not allowed")
        elif self._not_modified(scope):
            await _respond(send, 304, [(b"etag", self.etag), (b"cache-control", b"no-cache")], b"")
        else:
            headers = [
                (b"content-type", self.content_type),
                (b"content-length", str(len(self.body)).encode()),
                (b"etag", self.etag),
                (b"cache-control", b"no-cache"),
                (b"x-content-type-options", b"nosniff"),
            ]
            await _respond(send, 200, headers, b"" if scope["method"] == "HEAD" else self.body)

    def _not_modified(self, scope: Scope) -> bool:
        """Whether an ``If-None-Match`` header names this file's ETag (weak comparison)."""
        for name, value in scope.get("headers") or ():
            if name.lower() == b"if-none-match":
                for tag in value.split(b","):
                    tag = tag.strip()
                    if tag == b"*" or tag.removeprefix(b"W/") == self.etag:
                        return True
        return False


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Answer startup and shutdown, for when the script is the whole app."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
