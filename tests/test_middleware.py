"""GroupsMiddleware without surprises: an outer middleware's user is kept, refusals work on any
server's scope, and a failed revalidation is logged rather than silently skipped."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient

from adapters.starlette import install
from asgi_groups import GroupsMiddleware, InMemoryUsers, Registry, SimpleUser, WsView, codes
from asgi_groups.middleware import reject
from asgi_groups.revalidation import Revalidator, Watched
from asgi_groups.sessions import StarletteSessionCookie
from asgi_groups.testing import WebSocketTestClient
from asgi_groups.types import Message, Receive, Scope, Send, Session, UserLike
from asgi_groups.users import ANONYMOUS

from .support.codecs import PlainCookie

DORA = SimpleUser(7, "dora", frozenset({"explorers"}))


class Hello(WsView):
    """Says who the socket's user is and which groups it joined."""

    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.accept()
        assert self.connection is not None
        await self.send_json({"user": self.user.username, "groups": sorted(self.connection.groups)})


class HeaderAuth(AuthenticationBackend):
    """Starlette authentication: an ``x-user: dora`` header logs Dora in."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, Any] | None:
        if conn.headers.get("x-user") == "dora":
            return AuthCredentials(["authenticated"]), DORA
        return None


def starlette_app(registry: Registry, **options: Any) -> Starlette:
    """Starlette's ``AuthenticationMiddleware`` outside ``GroupsMiddleware``."""
    return Starlette(
        routes=[WebSocketRoute("/ws", Hello.as_asgi())],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=HeaderAuth()),
            Middleware(GroupsMiddleware, registry=registry, **options),
        ],
    )


async def test_user_set_by_starlette_authentication_is_kept_without_a_loader() -> None:
    async with Registry() as registry:
        app = starlette_app(registry)
        async with WebSocketTestClient(app, headers={"x-user": "dora"}) as ws:
            assert await ws.receive_json() == {"user": "dora", "groups": ["explorers"]}
            assert await registry.presence("explorers") == {"7": 1}


def test_install_puts_the_middleware_inside_the_apps_session_and_authentication() -> None:
    """``install`` on an app whose ``AuthenticationMiddleware`` reads its session: the member
    it sets is the socket's user (outermost, GroupsMiddleware saw neither and refused 403)."""
    from examples.auth.common import Chat
    from examples.auth.starlette_auth import SECRET_KEY, SessionBackend, login

    app = Starlette(
        routes=[Route("/login", login, methods=["POST"]), WebSocketRoute("/ws", Chat.as_asgi())]
    )
    app.add_middleware(AuthenticationMiddleware, backend=SessionBackend())
    app.add_middleware(SessionMiddleware, secret_key=SECRET_KEY)
    install(app, sessions=StarletteSessionCookie(SECRET_KEY))
    with TestClient(app) as client:
        form = {"username": "greg", "password": "greg-password"}
        assert client.post("/login", data=form).status_code == 204
        with client.websocket_connect("/ws", headers={"origin": "http://testserver"}) as ws:
            hello = ws.receive_json()
    assert (hello["user"], hello["groups"]) == ("greg", ["boys", "staff"])


async def test_with_a_loader_the_loader_decides_who_the_user_is() -> None:
    async with Registry() as registry:
        app = starlette_app(registry, sessions=PlainCookie(), users=InMemoryUsers([]))
        async with WebSocketTestClient(app, headers={"x-user": "dora"}) as ws:
            assert await ws.receive_json() == {"user": "", "groups": []}
            assert await registry.presence("explorers") == {}


# -- refusing, whatever the server put in "extensions" --------------------------------------------


class Recorder:
    """An ASGI ``send`` that keeps what it was given."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)


@pytest.mark.parametrize("scope", [{"extensions": None}, {"extensions": {}}, {}])
async def test_reject_without_the_response_extension_closes_before_accept(
    scope: dict[str, Any],
) -> None:
    send = Recorder()
    await reject(scope, send, 403, "Forbidden")
    assert send.messages == [{"type": "websocket.close", "code": codes.POLICY_VIOLATION}]


async def test_reject_with_the_response_extension_answers_http() -> None:
    send = Recorder()
    await reject({"extensions": {"websocket.http.response": {}}}, send, 403, "Forbidden: no")
    assert [m["type"] for m in send.messages] == [
        "websocket.http.response.start",
        "websocket.http.response.body",
    ]
    assert send.messages[0]["status"] == 403
    assert send.messages[1]["body"] == b"Forbidden: no"


async def test_foreign_origin_on_a_server_with_extensions_none_is_closed_1008() -> None:
    async with Registry() as registry:
        app = GroupsMiddleware(Hello.as_asgi(), registry)
        scope = WebSocketTestClient(app, origin="http://evil.example").scope
        scope["extensions"] = None
        server = ApplicationCommunicator(app, scope)
        await server.send_input({"type": "websocket.connect"})
        assert await server.receive_output(2) == {
            "type": "websocket.close",
            "code": codes.POLICY_VIOLATION,
        }
        await server.wait(2)


# -- revalidation failures are logged ------------------------------------------------------------


class BreakableCookie(PlainCookie):
    """``PlainCookie`` whose decoding of ``broken`` cookie values raises (a codec bug, a
    secret store that went away)."""

    def __init__(self) -> None:
        self.broken: set[str] = set()

    def decode(self, value: str) -> dict[str, Any] | None:
        if value in self.broken:
            raise RuntimeError("codec exploded")
        return super().decode(value)


async def test_a_socket_that_cannot_be_revalidated_is_logged_and_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    users = InMemoryUsers([SimpleUser(1, "greg"), SimpleUser(2, "chuck")])
    cookie = BreakableCookie()
    async with Registry() as registry:
        app = GroupsMiddleware(
            Hello.as_asgi(), registry, sessions=cookie, users=users, revalidate_every=3600
        )
        greg = WebSocketTestClient(app, cookies={"session": "1"})
        chuck = WebSocketTestClient(app, cookies={"session": "2"})
        async with greg, chuck:
            await greg.receive_json()
            await chuck.receive_json()
            cookie.broken.add("1")
            users.remove(2)
            with caplog.at_level(logging.ERROR, logger="asgi_groups.revalidation"):
                assert await app.revalidate() == 1
            assert await chuck.receive_close() == codes.UNAUTHORIZED
            assert await greg.receive_nothing()  # kept: a failure to check is not a logout
    (record,) = [r for r in caplog.records if r.name == "asgi_groups.revalidation"]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "could not revalidate the socket of user 1; keeping it"
    assert record.exc_info is not None and "codec exploded" in str(record.exc_info[1])


class FailsOnce(Revalidator):
    """A revalidator whose first round raises; the second one lets the socket end."""

    def __init__(self) -> None:
        super().__init__(0, self._anonymous)
        self.rounds = 0
        self.second_round = asyncio.Event()

    @staticmethod
    async def _anonymous(session: Session) -> UserLike:
        return ANONYMOUS

    async def revalidate(self) -> int:
        self.rounds += 1
        if self.rounds == 1:
            raise RuntimeError("round exploded")
        self.second_round.set()
        return 0


async def test_the_revalidation_loop_logs_a_failed_round_and_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    revalidator = FailsOnce()
    scope: dict[str, Any] = {"type": "websocket", "session": {"user_id": "1"}}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await revalidator.second_round.wait()

    async def nothing() -> Message:
        raise AssertionError("not called")

    with caplog.at_level(logging.ERROR, logger="asgi_groups.revalidation"):
        watched = Watched(scope, None, None, "1")
        await asyncio.wait_for(revalidator.serve(watched, app, scope, nothing, Recorder()), 5)
    assert revalidator.rounds >= 2
    messages = [r.getMessage() for r in caplog.records if r.name == "asgi_groups.revalidation"]
    assert messages[0].startswith("revalidation round failed")


async def test_revalidation_compares_user_ids_as_strings() -> None:
    """A loader that gives the id as 1 at the handshake and "1" later names the same user."""
    calls = 0

    async def load(session: Session) -> UserLike:
        nonlocal calls
        calls += 1
        return SimpleUser(1 if calls == 1 else "1", "greg")

    async with Registry() as registry:
        app = GroupsMiddleware(
            Hello.as_asgi(), registry, sessions=BreakableCookie(), users=load, revalidate_every=3600
        )
        greg = WebSocketTestClient(app, cookies={"session": "1"})
        async with greg:
            await greg.receive_json()
            assert await app.revalidate() == 0
            assert await greg.receive_nothing()  # still open


async def assert_foreign_origin_refused(app: GroupsMiddleware) -> None:
    """A handshake from a foreign Origin is refused before anything is accepted."""
    refused = ApplicationCommunicator(
        app, WebSocketTestClient(app, origin="http://evil.example").scope
    )
    await refused.send_input({"type": "websocket.connect"})
    assert (await refused.receive_output(2))["type"] in (
        "websocket.close",
        "websocket.http.response.start",
    )
    await refused.wait(2)


class OwnDispatch(Hello):
    """A view with its own dispatch: the middleware serves it the general way."""

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().dispatch(scope, receive, send)


@pytest.mark.parametrize("view", [Hello, OwnDispatch], ids=["served-directly", "own-dispatch"])
async def test_the_handshake_holds_however_the_view_is_served(view: type[WsView]) -> None:
    """A view served directly runs the middleware's handshake inside its own coroutine; one
    with its own dispatch goes the general way: the origin and the user hold for both."""
    async with Registry() as registry:
        app = GroupsMiddleware(
            view.as_asgi(), registry, sessions=PlainCookie(), users=InMemoryUsers([DORA])
        )
        async with WebSocketTestClient(app, cookies={"session": "7"}) as ws:
            assert await ws.receive_json() == {"user": "dora", "groups": ["explorers"]}
        await assert_foreign_origin_refused(app)
        assert registry.stats().connections == 0


class Bypass(WsView):
    """A view whose own dispatch never calls the default one: it accepts whatever reaches it."""

    reached: list[str] = []

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.reached.append(scope["path"])
        await receive()
        await send({"type": "websocket.accept"})


async def test_a_view_with_its_own_dispatch_is_reached_only_after_the_handshake() -> None:
    Bypass.reached.clear()
    async with Registry() as registry:
        app = GroupsMiddleware(Bypass.as_asgi(), registry)
        await assert_foreign_origin_refused(app)
    assert Bypass.reached == []


class SlowUsers:
    """A user store whose loads wait until the test lets them through; counts loads begun."""

    def __init__(self) -> None:
        self.begun = 0
        self.release = asyncio.Event()
        self.waiting = asyncio.Condition()

    async def load(self, session: Session) -> UserLike:
        async with self.waiting:
            self.begun += 1
            self.waiting.notify_all()
        await self.release.wait()
        return DORA

    async def until_begun(self, count: int) -> None:
        async with self.waiting:
            await self.waiting.wait_for(lambda: self.begun >= count)


async def test_a_storm_of_handshakes_is_checked_a_few_at_a_time() -> None:
    """Five sockets at once with ``max_handshakes=2``: two user loads run, three wait their
    turn, and all five open once the store answers."""
    users = SlowUsers()
    async with Registry() as registry:
        app = GroupsMiddleware(
            Hello.as_asgi(), registry, sessions=PlainCookie(), users=users, max_handshakes=2
        )
        tabs = [WebSocketTestClient(app, cookies={"session": "7"}) for _ in range(5)]
        opening = [asyncio.ensure_future(tab.connect()) for tab in tabs]
        await users.until_begun(2)
        for _ in range(100):  # loop turns: the other three get every chance to start a load
            await asyncio.sleep(0)
        assert users.begun == 2
        users.release.set()
        assert await asyncio.gather(*opening) == [True] * 5
        assert users.begun == 5
        for tab in tabs:
            assert (await tab.receive_json())["user"] == "dora"
            await tab.disconnect()


async def test_a_handshake_that_waits_too_long_for_its_turn_is_refused_503() -> None:
    users = SlowUsers()
    async with Registry() as registry:
        app = GroupsMiddleware(
            Hello.as_asgi(),
            registry,
            sessions=PlainCookie(),
            users=users,
            max_handshakes=1,
            handshake_wait=0.05,
        )
        first = WebSocketTestClient(app, cookies={"session": "7"})
        opening = asyncio.ensure_future(first.connect())
        await users.until_begun(1)
        late = WebSocketTestClient(app, cookies={"session": "7"})
        assert not await late.connect()
        assert late.status == 503
        assert registry.refused_handshakes["limit"] == 1
        users.release.set()
        assert await opening
        await first.disconnect()
