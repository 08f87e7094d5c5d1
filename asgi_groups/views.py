"""``WsView``: the connect / receive / disconnect lifecycle of one WebSocket, as a class.

``on_disconnect`` runs exactly once for every socket that reached ``on_connect``, also after an
exception; by then the connection has left every group and its writer has stopped. A client
that goes away mid-handshake or mid-send (``ConnectionClosed``) is expected: logged at DEBUG.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from asgiref.sync import markcoroutinefunction

from . import codes
from .connection import Connection
from .errors import ConnectionClosed
from .frames import encode_json
from .limits import DEFAULT_MAX_INBOUND_SIZE
from .middleware import CONNECTION_KEY, REGISTRY_KEY, reject
from .registry import Attachment, Registry
from .request import Request, scope_user
from .stream import Stream
from .types import ASGIApp, Message, Receive, Scope, Send, UserLike

__all__ = ["WsView", "groups_to_join"]

logger = logging.getLogger("asgi_groups.views")

GroupsSpec = Iterable[str] | Callable[[UserLike], Iterable[str]]
#: The middleware's handshake for one socket: True when admitted (else it refused it).
Admit = Callable[[Scope, Send], Awaitable[bool]]

_NOTHING: Any = MappingProxyType({})
"""Read-only and shared: what ``options`` and ``kwargs`` are until a view has its own."""


def groups_to_join(user: UserLike, groups: Iterable[str], *, user_groups: bool = True) -> list[str]:
    """``groups`` plus, when ``user_groups`` and the user is logged in, the user's own groups,
    without repeats: what ``WsView`` and every adapter's ``joined`` join on accept."""
    names = list(groups)
    if user_groups and user.is_authenticated:
        names.extend(user.groups)
    return list(dict.fromkeys(names))


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

    # Per-socket state in slots: an idle socket's view is one small object, with no instance
    # dict unless a subclass adds attributes of its own.
    __slots__ = (
        "_admit",
        "_rejected",
        "_request",
        "_send",
        "accepted",
        "close_code",
        "connection",
        "kwargs",
        "options",
        "registry",
        "scope",
    )

    def __init__(self, request: Request, registry: Registry | None = None, **options: Any):
        self.scope = request.scope
        self.registry: Registry = registry or request.scope.get(REGISTRY_KEY)  # type: ignore[assignment]
        self.options: dict[str, Any] = options or _NOTHING
        self.kwargs: Message = _NOTHING
        self.connection: Connection | None = None
        self.close_code: int | None = None
        self.accepted = False
        self._send: Send | None = None
        self._rejected = False
        self._admit: Admit | None = None
        self._request: Request | None = None

    @property
    def request(self) -> Request:
        """The opening handshake (made on first use, so that an idle socket keeps none)."""
        if self._request is None:
            self._request = Request(self.scope)
        return self._request

    # -- ASGI entry --------------------------------------------------------------------------

    @classmethod
    def as_asgi(cls, registry: Registry | None = None, **options: Any) -> ASGIApp:
        """An ASGI app serving this view, for any router: ``WebSocketRoute(path, V.as_asgi())``."""

        return ViewApp(cls, registry, options)

    @markcoroutinefunction
    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        return self.dispatch(scope, receive, send)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the lifecycle: handshake checks, on_connect, the receive loop, on_disconnect.

        One coroutine for the whole life of the socket (the receive loop is inline): an idle
        socket keeps this frame and nothing else of the view's alive.
        """
        if scope.get("type") != "websocket":
            raise RuntimeError("WsView serves websocket scopes only")
        if self._admit is not None:  # the middleware's handshake, run in this one frame
            admit, self._admit = self._admit, None
            admitted = await admit(scope, send)
            del admit  # an open socket keeps nothing of the handshake
            if not admitted:
                return
        self._send = send
        if self.registry is None:
            raise RuntimeError(
                "no registry: wrap the app in GroupsMiddleware or pass WsView.as_asgi(registry=...)"
            )
        if self.login_required and not scope_user(scope).is_authenticated:
            await reject(scope, send, 403, "Forbidden: login required")
            return
        try:
            try:
                await self.on_connect(scope, receive, send)
                if self.accepted and not self._rejected:
                    while True:
                        message = await receive()
                        kind = message["type"]
                        if kind == "websocket.receive":
                            refusal = self._refusal(message)
                            if refusal is not None:
                                await self.close(*refusal)
                            elif self.connection is None or self.connection.is_open:
                                # (once closing, what is still in flight is ignored)
                                self.kwargs = message
                                await self.on_receive(scope, receive, send)
                        elif kind == "websocket.disconnect":
                            self.close_code = int(message.get("code", codes.NORMAL))
                            break
                        # a stray "websocket.connect" (accepted without waiting for it): ignored
            except ConnectionClosed as exc:  # the client went away: expected, not a fault
                logger.debug("%s ended, the socket is gone: %s", type(self).__name__, exc)
                if self.connection is not None:
                    await self.connection.wait_closed()
            except Exception:
                logger.exception("error in %s; closing with 1011", type(self).__name__)
                await self._fail()
        except BaseException as exc:  # cancelled: by the server, or by the library's teardown
            if not await self._finish(exc, scope, receive, send):
                raise
        else:
            await self._finish(None, scope, receive, send)

    def _refusal(self, message: Message) -> tuple[int, str] | None:
        """Why an inbound frame closes the socket (close code and reason), or None if it is fine."""
        limit = self.max_message_size
        text = message.get("text")
        if text is not None:
            if self.accepts == "bytes":
                return codes.UNSUPPORTED_DATA, "text frames not accepted"
            if len(text) > limit or (
                len(text) * 4 > limit and len(text.encode("utf-8", "replace")) > limit
            ):
                return codes.MESSAGE_TOO_BIG, "message too big"
            return None
        if self.accepts == "text":
            return codes.UNSUPPORTED_DATA, "binary frames not accepted"
        if len(message.get("bytes") or b"") > limit:
            return codes.MESSAGE_TOO_BIG, "message too big"
        return None

    async def _finish(
        self, exc: BaseException | None, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """Leave the registry, then run ``on_disconnect`` (once, for an accepted socket).

        True when ``exc`` is the library's own teardown of the socket, which ends it quietly.
        """
        if not self.accepted:
            return False
        conn = self.connection
        quiet = False
        if conn is not None:
            quiet = Attachment.release(conn, None if exc is None else type(exc))
        if self.close_code is None and conn is not None:
            self.close_code = conn.close_code
        try:
            await self.on_disconnect(scope, receive, send)
        except Exception:
            logger.exception("error in %s.on_disconnect", type(self).__name__)
        return quiet

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
        elif self._send is not None:  # accepted, but registering failed
            try:
                await self._send({"type": "websocket.close", "code": codes.INTERNAL_ERROR})
            except Exception:
                logger.debug("could not close the socket", exc_info=True)

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
        return scope_user(self.scope)

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
        try:
            await self._send(message)
        except OSError as exc:  # how ASGI servers say the client has gone (e.g. uvicorn's)
            raise ConnectionClosed(f"the client went away during the handshake ({exc!r})") from exc
        self.accepted = True
        attachment = self.registry.attached(
            self._send, self.user, self.initial_groups(), stream=self.new_stream()
        )
        # entered here and released in _finish: the view keeps the connection, not the block
        self.connection = await attachment.__aenter__()
        self.scope[CONNECTION_KEY] = self.connection

    def new_stream(self) -> Stream | None:
        """The stream state of a recoverable connection; a plain view has none."""
        return None

    def initial_groups(self) -> list[str]:
        """Groups joined on accept: ``groups`` plus, by default, the user's own groups."""
        spec = type(self).groups
        user = self.user
        return groups_to_join(
            user, spec(user) if callable(spec) else spec, user_groups=self.join_user_groups
        )

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
                try:
                    await self._send({"type": "websocket.close", "code": code, "reason": reason})
                except OSError as exc:  # the client went away first: nothing to refuse
                    logger.debug("refusal not sent, the client went away (%r)", exc)
            return
        self.connection.close(code, reason)


class ViewApp:
    """The ASGI app ``WsView.as_asgi()`` returns: one view instance per socket.

    A class instance, not a function, so routers that inspect endpoints (Starlette's
    ``WebSocketRoute`` treats plain functions as ``websocket`` handlers) serve it as ASGI. Its
    ``__call__`` hands back the view's coroutine, marked as a coroutine function for servers and
    routers; hypercorn on Python 3.11 cannot see the mark: behind ``GroupsMiddleware`` (as a
    view should be) that does not matter, served bare there, name it ``asgi:module:app``.
    """

    __slots__ = ("options", "registry", "view")

    def __init__(self, view: type[WsView], registry: Registry | None, options: dict[str, Any]):
        self.view = view
        self.registry = registry
        self.options = options

    @markcoroutinefunction
    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing back the view's own coroutine: no frame of ours per socket.
        # Marked so that servers and routers still see an ASGI 3 app.
        return self.view(Request(scope), self.registry, **self.options).dispatch(
            scope, receive, send
        )

    def admitted(
        self, admit: Admit, registry: Registry, scope: Scope, receive: Receive, send: Send
    ) -> Awaitable[None] | None:
        """The view's coroutine with ``admit`` (the middleware's handshake) run first inside
        it, so that an open socket keeps one frame; None when the view has its own dispatch."""
        if self.view.dispatch is not WsView.dispatch:
            return None
        view = self.view(Request(scope), self.registry or registry, **self.options)
        view._admit = admit
        return view.dispatch(scope, receive, send)

    def __repr__(self) -> str:
        return f"<ViewApp {self.view.__qualname__}>"
