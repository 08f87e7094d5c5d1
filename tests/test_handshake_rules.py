"""Fixed-input tests for GroupsMiddleware, reject() and the Revalidator, found unguarded by
mutation testing (docs/CONTRIBUTING.md, "Mutation testing"): what a refused client receives,
what the app finds in the scope, and which sockets a revalidation round closes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from asgi_groups import GroupsMiddleware, InMemoryUsers, Registry, SimpleUser, WsView, codes
from asgi_groups.middleware import reject
from asgi_groups.testing import WebSocketTestClient
from asgi_groups.types import Receive, Scope, Send
from asgi_groups.users import ANONYMOUS

PEOPLE = [SimpleUser(1, "greg"), SimpleUser(2, "chuck")]


class Cookie:
    """The cookie value is the user id; a value in ``revoked`` no longer decodes (expired)."""

    cookie_name = "session"

    def __init__(self, name: str = "session") -> None:
        self.cookie_name = name
        self.revoked: set[str] = set()

    def decode(self, value: str) -> dict[str, Any] | None:
        if not value.isdigit() or value in self.revoked:
            return None
        return {"user_id": value}

    def encode(self, session: dict[str, Any]) -> str:
        return str(session["user_id"])


class Recorder:
    """An ASGI app that writes down the scope it was given and accepts or answers HTTP."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.calls: list[tuple[Receive, Send]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(dict(scope))
        self.calls.append((receive, send))
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            while (await receive())["type"] != "websocket.disconnect":
                pass


class Room(WsView):
    pass


async def sent(events: list[dict[str, Any]], event: dict[str, Any]) -> None:
    events.append(event)


# -- reject ------------------------------------------------------------------------------------


@pytest.mark.parametrize("extensions", [{"websocket.http.response": {}}])
async def test_reject_sends_an_http_response_where_the_server_can(extensions: Any) -> None:
    events: list[dict[str, Any]] = []
    await reject({"extensions": extensions}, lambda e: sent(events, e), 418, "Teapot: nö")
    assert events == [
        {
            "type": "websocket.http.response.start",
            "status": 418,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        },
        {"type": "websocket.http.response.body", "body": "Teapot: nö".encode()},
    ]


@pytest.mark.parametrize("extensions", [None, {}, {"websocket.other": {}}, "missing"])
async def test_reject_closes_with_1008_elsewhere(extensions: Any) -> None:
    scope: dict[str, Any] = {} if extensions == "missing" else {"extensions": extensions}
    events: list[dict[str, Any]] = []
    await reject(scope, lambda e: sent(events, e), 403, "Forbidden")
    assert events == [{"type": "websocket.close", "code": codes.POLICY_VIOLATION}]


# -- the handshake -----------------------------------------------------------------------------


async def refused(app: Any, **options: Any) -> tuple[int | None, bytes]:
    """Open a socket expected to be refused: the status and body the client got."""
    client = WebSocketTestClient(app, **options)
    communicator = client._communicator  # the body is not kept by the client
    await communicator.send_input({"type": "websocket.connect"})
    start = await communicator.receive_output(3)
    assert start["type"] == "websocket.http.response.start"
    body = await communicator.receive_output(3)
    return start["status"], body["body"]


async def test_a_refused_origin_gets_403_saying_why() -> None:
    async with Registry() as reg:
        app = GroupsMiddleware(Recorder(), reg)
        assert await refused(app, origin="https://evil.example") == (
            403,
            b"Forbidden: origin not allowed",
        )


async def test_a_failing_user_loader_gets_503_saying_why() -> None:
    async def broken(session: Any) -> Any:
        raise ConnectionError("database down")

    async with Registry() as reg:
        app = GroupsMiddleware(Recorder(), reg, sessions=Cookie(), users=broken)
        status = await refused(app, cookies={"session": "1"})
        assert status == (503, b"Service unavailable: cannot load the user")


async def test_a_scope_without_headers_is_refused_not_crashed() -> None:
    async with Registry() as reg:
        app = GroupsMiddleware(Recorder(), reg)
        client = WebSocketTestClient(app)
        del client.scope["headers"]
        assert not await client.connect()
        assert client.status == 403


async def test_the_scheme_decides_the_same_origin() -> None:
    async with Registry() as reg:
        app = GroupsMiddleware(Recorder(), reg)
        secure = WebSocketTestClient(app, origin="https://testserver")
        secure.scope["scheme"] = "wss"
        async with secure:
            pass
        plain = WebSocketTestClient(app, origin="http://testserver")
        del plain.scope["scheme"]  # ASGI's default is "ws"
        async with plain:
            pass
        wrong = WebSocketTestClient(app, origin="http://testserver")
        wrong.scope["scheme"] = "wss"
        assert not await wrong.connect()


async def test_http_passes_through_untouched() -> None:
    inner = Recorder()
    async with Registry() as reg:
        app = GroupsMiddleware(inner, reg, sessions=Cookie(), users=InMemoryUsers(PEOPLE))

        async def receive() -> dict[str, Any]:
            return {"type": "http.request"}

        async def send(event: Any) -> None:
            return None

        scope = {"type": "http", "headers": [(b"cookie", b"session=1")]}
        await app(scope, receive, send)
        assert inner.calls == [(receive, send)]
        assert "user" not in inner.scopes[0] and "session" not in inner.scopes[0]


async def load_person(session: Any) -> Any:
    """A user loader that is a plain async function (no ``load`` method)."""
    return {str(u.id): u for u in PEOPLE}.get(str(session.get("user_id")))


async def test_the_app_finds_session_user_and_registry_in_the_scope() -> None:
    inner = Recorder()
    async with Registry() as reg:
        app = GroupsMiddleware(inner, reg, sessions=[Cookie("other"), Cookie()], users=load_person)
        async with WebSocketTestClient(app, cookies={"session": "2"}):
            pass
        scope = inner.scopes[0]
        assert scope["session"] == {"user_id": "2"}
        assert scope["user"] is PEOPLE[1]
        assert scope["asgi_groups.registry"] is reg


async def test_a_loader_without_a_load_method_must_be_callable() -> None:
    async with Registry() as reg:
        with pytest.raises(TypeError, match=r"^users must have an async load\(session\) method"):
            GroupsMiddleware(Recorder(), reg, users=42)
        assert GroupsMiddleware(Recorder(), reg).codecs == []
        assert len(GroupsMiddleware(Recorder(), reg, sessions=(Cookie(), Cookie())).codecs) == 2


async def test_a_session_already_in_the_scope_is_used_and_an_empty_one_is_not() -> None:
    inner = Recorder()
    async with Registry() as reg:
        app = GroupsMiddleware(inner, reg, sessions=Cookie(), users=InMemoryUsers(PEOPLE))
        outer = WebSocketTestClient(app)  # e.g. Starlette's SessionMiddleware ran first
        outer.scope["session"] = {"user_id": "1"}
        async with outer:
            pass
        empty = WebSocketTestClient(app, cookies={"session": "2"})
        empty.scope["session"] = {}
        async with empty:
            pass
        assert [s["user"] for s in inner.scopes] == [PEOPLE[0], PEOPLE[1]]


async def test_an_outer_user_is_kept_only_without_a_loader() -> None:
    outer_user = SimpleUser(7, "from-outer")
    async with Registry() as reg:
        kept, replaced, anonymous = Recorder(), Recorder(), Recorder()
        apps = [
            (GroupsMiddleware(kept, reg, sessions=Cookie()), True),
            (GroupsMiddleware(replaced, reg, sessions=Cookie(), users=InMemoryUsers(PEOPLE)), True),
            (GroupsMiddleware(anonymous, reg, sessions=Cookie()), False),
        ]
        for app, with_outer in apps:
            client = WebSocketTestClient(app, cookies={"session": "1"})
            if with_outer:
                client.scope["user"] = outer_user
            async with client:
                pass
        assert kept.scopes[0]["user"] is outer_user
        assert replaced.scopes[0]["user"] is PEOPLE[0]
        assert anonymous.scopes[0]["user"] is ANONYMOUS


async def test_the_loader_is_not_asked_about_an_empty_session() -> None:
    asked: list[Any] = []

    async def load(session: Any) -> Any:
        asked.append(session)
        return PEOPLE[0]

    inner = Recorder()
    async with Registry() as reg:
        app = GroupsMiddleware(inner, reg, sessions=Cookie(), users=load)
        async with WebSocketTestClient(app):  # no cookie
            pass
        assert asked == [] and inner.scopes[0]["user"] is ANONYMOUS


async def test_the_first_handshakes_start_the_registry_once() -> None:
    starts = 0
    reg = Registry()
    start = reg.start

    async def counted() -> None:
        nonlocal starts
        starts += 1
        await start()

    reg.start = counted  # type: ignore[method-assign]
    app = GroupsMiddleware(Room.as_asgi(), reg)
    try:
        clients = [WebSocketTestClient(app) for _ in range(3)]
        assert all(await asyncio.gather(*(c.connect() for c in clients)))
        assert reg.started and starts == 1
        for client in clients:
            await client.disconnect()
    finally:
        await reg.close()


# -- revalidation ------------------------------------------------------------------------------


def test_revalidation_needs_an_interval_and_a_loader() -> None:
    reg = Registry()
    users = InMemoryUsers(PEOPLE)
    assert GroupsMiddleware(Recorder(), reg, users=users).revalidator is None
    assert GroupsMiddleware(Recorder(), reg, revalidate_every=5).revalidator is None
    both = GroupsMiddleware(Recorder(), reg, users=users, revalidate_every=5)
    assert both.revalidator is not None and both.revalidate_every == 5


async def test_revalidate_without_a_revalidator_closes_nothing() -> None:
    async with Registry() as reg:
        app = GroupsMiddleware(Room.as_asgi(), reg, sessions=Cookie(), users=InMemoryUsers(PEOPLE))
        async with WebSocketTestClient(app, cookies={"session": "1"}) as ws:
            assert await app.revalidate() == 0
            assert ws.close_code is None


async def test_a_round_closes_every_lapsed_socket_and_counts_them() -> None:
    """An expired cookie, a deleted user and another account behind the same cookie all close
    with 4401; sockets checked after a valid one or a failed check are still checked."""
    cookie = Cookie()
    users = InMemoryUsers([*PEOPLE, SimpleUser(3, "mike"), SimpleUser(4, "lisa")])
    flaky = {"fail": False}

    async def load(session: Any) -> Any:
        if flaky["fail"] and session.get("user_id") == "4":
            raise ConnectionError("store down")
        return await users.load(session)

    async with Registry() as reg:
        app = GroupsMiddleware(
            Room.as_asgi(), reg, sessions=cookie, users=load, revalidate_every=3600
        )
        # checked in this order: valid, check fails, lapsed, lapsed
        tabs = [WebSocketTestClient(app, cookies={"session": str(i)}) for i in (3, 4, 2, 1)]
        mike, lisa, chuck, greg = tabs
        for ws in tabs:
            assert await ws.connect()
        flaky["fail"] = True  # lisa cannot be checked: kept
        cookie.revoked.add("1")  # greg's cookie expired
        users.remove(2)  # chuck was deleted
        users.add(SimpleUser(3, "mike"))  # mike is still mike
        assert await app.revalidate() == 2
        for ws in (chuck, greg):
            assert await ws.receive_close() == codes.UNAUTHORIZED
            assert ws.close_reason == "session no longer valid"
        assert await lisa.receive_nothing() and await mike.receive_nothing()
        assert await app.revalidate() == 0  # closed sockets are not counted twice
        for ws in (lisa, mike):
            await ws.disconnect()


async def test_another_account_behind_the_same_session_closes_the_socket() -> None:
    users = InMemoryUsers(PEOPLE)
    async with Registry() as reg:
        app = GroupsMiddleware(
            Room.as_asgi(), reg, sessions=Cookie(), users=users, revalidate_every=3600
        )
        async with WebSocketTestClient(app, cookies={"session": "1"}) as ws:
            users.add(SimpleUser(1, "greg", frozenset({"renamed"})))  # reloaded, same id
            assert await app.revalidate() == 0
            users.remove(1)
            users.add(SimpleUser(1, "greg", is_authenticated=False))
            assert await app.revalidate() == 1
            assert await ws.receive_close() == codes.UNAUTHORIZED


async def test_a_session_that_now_names_another_account_closes_the_socket() -> None:
    accounts = {"1": PEOPLE[0]}

    async def load(session: Any) -> Any:
        return accounts.get(str(session.get("user_id")))

    async with Registry() as reg:
        app = GroupsMiddleware(
            Room.as_asgi(), reg, sessions=Cookie(), users=load, revalidate_every=3600
        )
        async with WebSocketTestClient(app, cookies={"session": "1"}) as ws:
            assert await app.revalidate() == 0
            accounts["1"] = PEOPLE[1]  # logged in, but someone else
            assert await app.revalidate() == 1
            assert await ws.receive_close() == codes.UNAUTHORIZED


async def test_a_session_from_an_outer_middleware_is_revalidated_from_the_scope() -> None:
    users = InMemoryUsers(PEOPLE)
    async with Registry() as reg:
        app = GroupsMiddleware(
            Room.as_asgi(), reg, sessions=Cookie(), users=users, revalidate_every=3600
        )
        ws = WebSocketTestClient(app)
        ws.scope["session"] = {"user_id": "1"}
        async with ws:
            assert await app.revalidate() == 0
            ws.scope["session"].clear()  # the outer session was emptied (logout)
            assert await app.revalidate() == 1
            assert await ws.receive_close() == codes.UNAUTHORIZED


async def test_a_watched_socket_without_a_connection_is_left_alone() -> None:
    """An app that is not a WsView puts no Connection in the scope: nothing to close."""
    cookie = Cookie()
    async with Registry() as reg:
        app = GroupsMiddleware(
            Recorder(), reg, sessions=cookie, users=InMemoryUsers(PEOPLE), revalidate_every=3600
        )
        async with WebSocketTestClient(app, cookies={"session": "1"}):
            cookie.revoked.add("1")
            assert await app.revalidate() == 0
