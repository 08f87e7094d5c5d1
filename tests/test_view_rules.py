"""Fixed-input tests for WsView's lifecycle, found unguarded by mutation testing
(docs/CONTRIBUTING.md, "Mutation testing"): what the hooks are given, how each failure and
refusal looks to the client, the inbound size bounds and the library's own teardown.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest
from asgiref.testing import ApplicationCommunicator

from asgi_groups import GroupsMiddleware, InMemoryUsers, QueueLimits, Registry, SimpleUser, WsView
from asgi_groups.backends.memory import MemoryBackend
from asgi_groups.errors import BackendUnavailable
from asgi_groups.testing import WebSocketTestClient
from asgi_groups.types import Receive, Scope, Send
from asgi_groups.views import groups_to_join

from .support.codecs import PlainCookie

PEOPLE = [SimpleUser(1, "greg", frozenset({"boys"})), SimpleUser(2, "amanda")]


class Guest:
    """Truthy, with groups, but not logged in."""

    id = 9
    username = "guest"
    groups = frozenset({"guests"})
    is_authenticated = False


def behind(app: Any, registry: Registry) -> GroupsMiddleware:
    return GroupsMiddleware(app, registry, sessions=PlainCookie(), users=InMemoryUsers(PEOPLE))


async def refused(app: Any, **options: Any) -> tuple[int, bytes]:
    """Open a socket expected to be refused with an HTTP response: its status and body."""
    client = WebSocketTestClient(app, **options)
    communicator = client._communicator  # the client does not keep the body
    await communicator.send_input({"type": "websocket.connect"})
    start = await communicator.receive_output(3)
    assert start["type"] == "websocket.http.response.start"
    body = await communicator.receive_output(3)
    return int(start["status"]), bytes(body["body"])


# -- groups joined on accept -------------------------------------------------------------------


def test_groups_to_join_adds_a_logged_in_users_own_groups_once() -> None:
    greg = PEOPLE[0]
    assert groups_to_join(greg, ["lobby", "boys"]) == ["lobby", "boys"]
    assert groups_to_join(greg, ["lobby"]) == ["lobby", "boys"]
    assert groups_to_join(greg, ["lobby"], user_groups=False) == ["lobby"]
    assert groups_to_join(Guest(), ["lobby"]) == ["lobby"]  # type: ignore[arg-type]


class PerUser(WsView):
    groups: ClassVar[Any] = staticmethod(lambda user: [f"room-{user.username}"])
    join_user_groups = False


async def test_groups_can_be_a_function_of_the_user_and_user_groups_can_be_off() -> None:
    async with Registry() as reg:
        app = behind(PerUser.as_asgi(), reg)
        async with WebSocketTestClient(app, cookies={"session": "1"}):
            (conn,) = reg.connections(1)
            assert reg.groups_of(conn) == {"room-greg"}  # not "boys"


# -- the hooks ---------------------------------------------------------------------------------


class Recording(WsView):
    """Writes down what each hook was given."""

    seen: ClassVar[list[tuple[str, Any, Any, Any]]] = []

    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(("connect", scope, receive, send))
        with pytest.raises(RuntimeError, match=r"^the socket is not accepted yet$"):
            await self.send_text("too early")
        await self.accept()

    async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(("receive", scope, receive, send))
        text = self.kwargs.get("text")
        if text == "bytes":
            await self.send_bytes(bytearray(b"\x00\x01"))
        elif text == "leave":
            await self.leave("lobby")
            await self.send_text(",".join(sorted(self.connection.groups)))  # type: ignore[union-attr]
        elif text == "bye":
            await self.close(4000, "bye")
        else:
            await self.send_text(f"echo {text}")

    async def on_disconnect(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(("disconnect", scope, receive, send))
        self.seen.append(("code", self.close_code, None, None))


async def test_every_hook_gets_the_sockets_scope_receive_and_send() -> None:
    Recording.seen = []
    async with Registry() as reg:
        app = Recording.as_asgi(reg, option="x")
        communicator = ApplicationCommunicator(app, {"type": "websocket", "headers": []})
        await communicator.send_input({"type": "websocket.connect"})
        assert (await communicator.receive_output(3))["type"] == "websocket.accept"
        await communicator.send_input({"type": "websocket.receive", "text": "hi"})
        assert (await communicator.receive_output(3))["text"] == "echo hi"
        await communicator.send_input({"type": "websocket.disconnect"})  # no code: 1000
        await communicator.wait(3)
    kinds = [entry[0] for entry in Recording.seen]
    assert kinds == ["connect", "receive", "disconnect", "code"]
    first = Recording.seen[0][1:]
    assert first[0]["type"] == "websocket" and callable(first[1]) and callable(first[2])
    for entry in Recording.seen[1:3]:
        assert entry[1] is first[0] and entry[2] is first[1] and entry[3] is first[2]
    assert Recording.seen[3][1] == 1000


async def test_send_bytes_leave_and_a_close_that_ignores_what_follows() -> None:
    Recording.seen = []

    class InLobby(Recording):
        groups = ["lobby", "other"]

    async with Registry() as reg:
        app = behind(InLobby.as_asgi(), reg)
        async with WebSocketTestClient(app, cookies={"session": "2"}) as ws:
            await ws.send_text("bytes")
            assert await ws.receive_bytes() == b"\x00\x01"
            await ws.send_text("leave")
            assert await ws.receive_text() == "other"
            await ws.send_text("bye")
            await ws.send_text("after the close")
            assert await ws.receive_close() == 4000
            assert ws.close_reason == "bye"
    texts = [e for e in Recording.seen if e[0] == "receive"]
    assert len(texts) == 3  # "after the close" never reached on_receive


async def test_as_asgi_passes_registry_and_options_to_each_view() -> None:
    views: list[WsView] = []

    class Remember(WsView):
        async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
            views.append(self)
            await self.accept()

    async with Registry() as reg:
        async with WebSocketTestClient(Remember.as_asgi(reg, colour="blue")):
            assert reg.stats().connections == 1
        async with WebSocketTestClient(behind(Remember.as_asgi(), reg)):
            pass
    assert views[0].registry is reg and views[0].options == {"colour": "blue"}
    assert views[1].options == {}


async def test_a_view_refuses_other_scopes_and_a_missing_registry() -> None:
    async def nothing() -> dict[str, Any]:
        return {}

    async def ignore(event: Any) -> None:
        return None

    app = WsView.as_asgi()
    with pytest.raises(RuntimeError, match=r"^WsView serves websocket scopes only$"):
        await app({"type": "http"}, nothing, ignore)
    with pytest.raises(RuntimeError, match=r"^no registry: wrap the app in GroupsMiddleware"):
        await app({"type": "websocket"}, nothing, ignore)


# -- accept, refuse, fail ----------------------------------------------------------------------


class Sub(WsView):
    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.accept("chat.v1", headers=[(b"x-room", b"lobby")])


async def test_accept_sends_the_subprotocol_and_headers() -> None:
    async with Registry() as reg:
        communicator = ApplicationCommunicator(Sub.as_asgi(reg), {"type": "websocket"})
        await communicator.send_input({"type": "websocket.connect"})
        accept = await communicator.receive_output(3)
        assert accept == {
            "type": "websocket.accept",
            "subprotocol": "chat.v1",
            "headers": [(b"x-room", b"lobby")],
        }
        await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
        await communicator.wait(3)
        plain = ApplicationCommunicator(WsView.as_asgi(reg), {"type": "websocket"})
        await plain.send_input({"type": "websocket.connect"})
        assert await plain.receive_output(3) == {"type": "websocket.accept"}
        await plain.send_input({"type": "websocket.disconnect", "code": 1000})
        await plain.wait(3)


class Members(WsView):
    login_required = True


async def test_login_required_refuses_with_a_403_that_says_why() -> None:
    async with Registry() as reg:
        app = behind(Members.as_asgi(), reg)
        assert await refused(app) == (403, b"Forbidden: login required")


class Picky(WsView):
    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.close(4003, "not today")
        await self.close(4004, "twice")  # a second refusal sends nothing


async def test_close_before_accept_refuses_once_with_its_code() -> None:
    async with Registry() as reg:
        communicator = ApplicationCommunicator(Picky.as_asgi(reg), {"type": "websocket"})
        await communicator.send_input({"type": "websocket.connect"})
        assert await communicator.receive_output(3) == {
            "type": "websocket.close",
            "code": 4003,
            "reason": "not today",
        }
        await communicator.wait(3)
        assert await communicator.receive_nothing(0)


class Undecided(WsView):
    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None  # neither accepts nor refuses


async def test_a_view_that_neither_accepts_nor_refuses_ends_at_once() -> None:
    async def send(event: Any) -> None:
        raise AssertionError(f"nothing is sent, got {event!r}")

    async with Registry() as reg:
        task, _ = await run_view(Undecided, reg, {}, send)
        assert await task is None  # returned: the server refuses the handshake
        assert reg.stats().connections == 0


class Broken(WsView):
    codes: ClassVar[list[int | None]] = []

    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.request.query.get("when") == "before":
            raise RuntimeError("bug before accept")
        await self.accept()

    async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("bug in a handler")

    async def on_disconnect(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.codes.append(self.close_code)


async def test_an_error_before_accept_is_a_500_saying_so() -> None:
    async with Registry() as reg:
        app = behind(Broken.as_asgi(), reg)
        assert await refused(app, query_string="when=before") == (500, b"Internal Server Error")


async def test_an_error_in_a_handler_closes_with_1011_saying_so() -> None:
    Broken.codes = []
    async with Registry() as reg:
        app = behind(Broken.as_asgi(), reg)
        async with WebSocketTestClient(app) as ws:
            await ws.send_text("anything")
            assert await ws.receive_close() == 1011
            assert ws.close_reason == "internal error"
    assert Broken.codes == [1011]


class Failing(MemoryBackend):
    async def subscribe(self, channel: str) -> None:
        if channel.startswith("g:"):
            raise BackendUnavailable("down")


class Grouped(WsView):
    groups = ["lobby"]
    codes: ClassVar[list[int | None]] = []

    async def on_disconnect(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.codes.append(self.close_code)


async def test_accepted_but_not_registered_closes_with_1011() -> None:
    Grouped.codes = []
    async with Registry(backend=Failing()) as reg:
        app = behind(Grouped.as_asgi(), reg)
        async with WebSocketTestClient(app) as ws:
            message = await ws.receive()
            assert message == {"type": "websocket.close", "code": 1011}
        assert reg.stats().connections == 0
    assert Grouped.codes == [1011]


# -- inbound frames ----------------------------------------------------------------------------


class Small(WsView):
    max_message_size = 4

    async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.send_text("ok")


class TextOnly(Small):
    accepts = "text"


class BytesOnly(Small):
    accepts = "bytes"


async def closes_with(app: Any, frame: dict[str, Any]) -> tuple[int | None, str] | None:
    """Send one frame: None if the view took it, else the close code and reason."""
    async with WebSocketTestClient(app) as ws:
        await ws._communicator.send_input({"type": "websocket.receive", **frame})
        message = await ws.receive()
        if message["type"] == "websocket.send":
            return None
        return ws.close_code, ws.close_reason


async def test_inbound_size_bounds_are_inclusive_and_counted_in_utf8_bytes() -> None:
    async with Registry() as reg:
        app = behind(Small.as_asgi(), reg)
        too_big = (1009, "message too big")
        assert await closes_with(app, {"text": "abcd"}) is None
        assert await closes_with(app, {"text": "abcde"}) == too_big
        assert await closes_with(app, {"text": "éé"}) is None  # 4 bytes
        assert await closes_with(app, {"text": "ééa"}) == too_big  # 5 bytes, 3 chars
        assert await closes_with(app, {"bytes": b"1234"}) is None
        assert await closes_with(app, {"bytes": b"12345"}) == too_big


async def test_a_view_may_accept_one_kind_of_frame_only() -> None:
    async with Registry() as reg:
        text_only, bytes_only = behind(TextOnly.as_asgi(), reg), behind(BytesOnly.as_asgi(), reg)
        assert await closes_with(text_only, {"text": "ab"}) is None
        assert await closes_with(text_only, {"bytes": b"ab"}) == (
            1003,
            "binary frames not accepted",
        )
        assert await closes_with(bytes_only, {"bytes": b"ab"}) is None
        assert await closes_with(bytes_only, {"text": "ab"}) == (1003, "text frames not accepted")


# -- cancellation: the server's and the library's own teardown ---------------------------------


class Watch(WsView):
    """Closes itself on connect when asked to; records on_disconnect."""

    disconnects: ClassVar[list[int | None]] = []

    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.accept()
        if scope.get("close_at_once"):
            await self.close(4001, "going")

    async def on_disconnect(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "websocket" and callable(receive) and callable(send)
        self.disconnects.append(self.close_code)


async def run_view(
    view: type[WsView], reg: Registry, scope: dict[str, Any], send: Send
) -> tuple[asyncio.Task[None], asyncio.Queue[dict[str, Any]]]:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    inbox.put_nowait({"type": "websocket.connect"})
    app = view.as_asgi(reg)
    task = asyncio.get_running_loop().create_task(
        app({"type": "websocket", **scope}, inbox.get, send)
    )
    return task, inbox


async def test_the_librarys_teardown_ends_the_view_quietly() -> None:
    """A close that never completes is torn down: the view's task ends normally (not
    cancelled), on_disconnect runs once and sees the code the view closed with."""
    Watch.disconnects = []
    accepted = asyncio.Event()

    async def send(event: Any) -> None:
        if event["type"] == "websocket.accept":
            accepted.set()
        elif event["type"] == "websocket.close":
            await asyncio.Event().wait()  # the client never reads it

    async with Registry(limits=QueueLimits(close_timeout=0.01)) as reg:
        task, _ = await run_view(Watch, reg, {"close_at_once": True}, send)
        assert await task is None
        assert not task.cancelled()
        assert accepted.is_set()
        assert Watch.disconnects == [4001]
        assert reg.stats().connections == 0


async def test_a_server_cancellation_propagates_after_on_disconnect() -> None:
    Watch.disconnects = []
    accepted = asyncio.Event()

    async def send(event: Any) -> None:
        if event["type"] == "websocket.accept":
            accepted.set()

    async with Registry() as reg:
        task, _ = await run_view(Watch, reg, {}, send)
        await accepted.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert Watch.disconnects == [None]
        assert reg.stats().connections == 0


async def test_cancelling_a_socket_that_was_never_accepted_propagates() -> None:
    Watch.disconnects = []
    waiting = asyncio.Event()

    class Slow(Watch):
        async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
            waiting.set()
            await asyncio.Event().wait()  # never accepts

    async def send(event: Any) -> None:
        return None

    async with Registry() as reg:
        task, _ = await run_view(Slow, reg, {}, send)
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert Watch.disconnects == []  # on_disconnect is for sockets that were accepted


async def test_close_after_accept_sends_code_and_reason() -> None:
    class Closer(WsView):
        async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
            if self.kwargs["text"] == "default":
                await self.close()
            else:
                await self.close(4002, "done")

    async with Registry() as reg:
        app = behind(Closer.as_asgi(), reg)
        async with WebSocketTestClient(app) as ws:
            await ws.send_text("default")
            assert await ws.receive_close() == 1000 and ws.close_reason == ""
        async with WebSocketTestClient(app) as ws:
            await ws.send_text("other")
            assert await ws.receive_close() == 4002 and ws.close_reason == "done"
