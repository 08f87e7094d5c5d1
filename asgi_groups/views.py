"""``WsView``: the connect / receive / disconnect lifecycle of one WebSocket, as a class.

``on_disconnect`` runs exactly once for every socket that reached ``on_connect``, also after an
exception; by then the connection has left every group and its writer has stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Literal

from . import codes
from .connection import Connection
from .frames import encode_json
from .limits import DEFAULT_MAX_INBOUND_SIZE
from .middleware import CONNECTION_KEY, REGISTRY_KEY, reject
from .registry import Registry
from .request import Request
from .types import ASGIApp, Message, Receive, Scope, Send, UserLike

__all__ = ["WsView"]

logger = logging.getLogger("asgi_groups.views")

GroupsSpec = Iterable[str] | Callable[[UserLike], Iterable[str]]


class WsView:
    """Subclass and override ``on_connect`` / ``on_receive`` / ``on_disconnect``.

    Class attributes:
    ``login_required`` — refuse anonymous users at the handshake (HTTP 403);
    ``groups`` — joined on connect: names, or a callable of the user returning names;
    ``join_user_groups`` — also join the user's own groups (``user.groups``), default True;
    ``accepts`` — ``"text"``, ``"bytes"`` or ``"any"``; another frame type closes with 1003;
    ``max_message_size`` — inbound frames over this many bytes close with 1009.
    """

    login_required: ClassVar[bool] = False
    groups: ClassVar[GroupsSpec] = ()
    join_user_groups: ClassVar[bool] = True
    accepts: ClassVar[Literal["text", "bytes", "any"]] = "any"
    max_message_size: ClassVar[int] = DEFAULT_MAX_INBOUND_SIZE

    def __init__(self, request: Request, registry: Registry | None = None, **options: Any):
        self.request = request
        self.scope = request.scope
        self.registry: Registry = registry or request.scope.get(REGISTRY_KEY)  # type: ignore[assignment]
        self.options = options
        self.kwargs: Message = {}
        self.connection: Connection | None = None
        self.close_code: int | None = None
        self.accepted = False
        self._send: Send | None = None
        self._rejected = False

    # -- ASGI entry --------------------------------------------------------------------------

    @classmethod
    def as_asgi(cls, registry: Registry | None = None, **options: Any) -> ASGIApp:
        """An ASGI app serving this view, for any router: ``WebSocketRoute(path, V.as_asgi())``."""

        return ViewApp(cls, registry, options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.dispatch(scope, receive, send)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the lifecycle: handshake checks, on_connect, the receive loop, on_disconnect."""
        if scope.get("type") != "websocket":
            raise RuntimeError("WsView serves websocket scopes only")
        self._send = send
        if self.registry is None:
            raise RuntimeError(
                "no registry: wrap the app in GroupsMiddleware or pass WsView.as_asgi(registry=...)"
            )
        if self.login_required and not self.request.user.is_authenticated:
            await reject(scope, send, 403, "Forbidden: login required")
            return
        task = asyncio.current_task()
        try:
            await self.on_connect(scope, receive, send)
            if self.accepted and not self._rejected:
                await self._receive_loop(scope, receive, send)
        except asyncio.CancelledError:
            if not (self.connection is not None and self.connection.killed and task is not None):
                raise
            task.uncancel()
        except Exception:
            logger.exception("error in %s; closing with 1011", type(self).__name__)
            await self._fail()
        finally:
            if self.accepted:
                try:
                    await self._finish(scope, receive, send)
                finally:
                    if self.connection is not None:
                        self.connection.finish()

    async def _receive_loop(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_message_size
        accepts = self.accepts
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    if accepts == "bytes":
                        await self.close(codes.UNSUPPORTED_DATA, "text frames not accepted")
                        continue
                    if len(text) > limit or (
                        len(text) * 4 > limit and len(text.encode("utf-8", "replace")) > limit
                    ):
                        await self.close(codes.MESSAGE_TOO_BIG, "message too big")
                        continue
                else:
                    data = message.get("bytes") or b""
                    if accepts == "text":
                        await self.close(codes.UNSUPPORTED_DATA, "binary frames not accepted")
                        continue
                    if len(data) > limit:
                        await self.close(codes.MESSAGE_TOO_BIG, "message too big")
                        continue
                if self.connection is not None and not self.connection.is_open:
                    continue  # closing: ignore what is still in flight
                self.kwargs = message
                await self.on_receive(scope, receive, send)
            elif kind == "websocket.disconnect":
                self.close_code = int(message.get("code", codes.NORMAL))
                return
            # a stray "websocket.connect" (we accepted without waiting for it) is ignored

    async def _finish(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = self.connection
        if conn is not None:
            if self.close_code is None:
                self.close_code = conn.close_code
            conn.finish()
        try:
            await self.on_disconnect(scope, receive, send)
        except Exception:
            logger.exception("error in %s.on_disconnect", type(self).__name__)

    async def _fail(self) -> None:
        if not self.accepted:
            if self._send is not None:
                try:
                    await reject(self.scope, self._send, 500, "Internal Server Error")
                except Exception:
                    logger.debug("could not refuse the handshake", exc_info=True)
            return
        self.close_code = codes.INTERNAL_ERROR
        if self.connection is not None:
            self.connection.abort(codes.INTERNAL_ERROR, "internal error")
            await self.connection.wait_closed()

    # -- hooks -------------------------------------------------------------------------------

    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Called once per handshake; the default accepts (and joins the configured groups)."""
        await self.accept()

    async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Called per inbound frame; the ASGI message is in ``self.kwargs``."""

    async def on_disconnect(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Called exactly once after the socket is gone (``self.close_code`` says why)."""

    # -- helpers -----------------------------------------------------------------------------

    @property
    def user(self) -> UserLike:
        return self.request.user

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        """Complete the handshake, register the connection and join the initial groups."""
        if self.accepted:
            return
        assert self._send is not None, "accept() is called from on_connect"
        message: Message = {"type": "websocket.accept"}
        if subprotocol is not None:
            message["subprotocol"] = subprotocol
        if headers:
            message["headers"] = headers
        await self._send(message)
        self.accepted = True
        user = self.user
        self.connection = await self.registry.connect(
            self._send, user if user.is_authenticated else None
        )
        self.scope[CONNECTION_KEY] = self.connection
        for group in self.initial_groups():
            if not self.connection.is_open:
                break  # revoked while an earlier join waited for the backend
            await self.registry.join(self.connection, group)

    def initial_groups(self) -> list[str]:
        """Groups joined on accept: ``groups`` plus, by default, the user's own groups."""
        spec = type(self).groups
        names = list(spec(self.user) if callable(spec) else spec)
        if self.join_user_groups and self.user.is_authenticated:
            names.extend(self.user.groups)
        return list(dict.fromkeys(names))

    def _conn(self) -> Connection:
        if self.connection is None:
            raise RuntimeError("the socket is not accepted yet")
        return self.connection

    async def send_text(self, text: str) -> None:
        await self._conn().send(text)

    async def send_bytes(self, data: bytes) -> None:
        await self._conn().send(bytes(data))

    async def send_json(self, data: Any) -> None:
        """Send JSON as a text frame (encoded by pydantic-core: models, datetimes, UUIDs work)."""
        await self._conn().send(encode_json(data))

    async def join(self, group: str) -> None:
        await self.registry.join(self._conn(), group)

    async def leave(self, group: str) -> None:
        await self.registry.leave(self._conn(), group)

    async def close(self, code: int = codes.NORMAL, reason: str = "") -> None:
        """Close the socket (after frames already queued); before accept this refuses it (403)."""
        if self.connection is None:
            if not self._rejected and self._send is not None:
                self._rejected = True
                await self._send({"type": "websocket.close", "code": code, "reason": reason})
            return
        self.connection.close(code, reason)


class ViewApp:
    """The ASGI app ``WsView.as_asgi()`` returns: one view instance per socket.

    A class instance, not a function, so routers that inspect endpoints (Starlette's
    ``WebSocketRoute`` treats plain functions as ``websocket`` handlers) serve it as ASGI.
    """

    __slots__ = ("options", "registry", "view")

    def __init__(self, view: type[WsView], registry: Registry | None, options: dict[str, Any]):
        self.view = view
        self.registry = registry
        self.options = options

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        view = self.view(Request(scope), self.registry, **self.options)
        await view.dispatch(scope, receive, send)

    def __repr__(self) -> str:
        return f"<ViewApp {self.view.__qualname__}>"
