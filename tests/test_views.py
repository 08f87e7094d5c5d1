"""WsView through the test client (no server): lifecycle, limits, origin, login."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from asgi_groups import (
    GroupsMiddleware,
    HistoryLimits,
    InMemoryUsers,
    RecoverableView,
    Registry,
    SimpleUser,
    WsView,
)
from asgi_groups.testing import WebSocketTestClient
from asgi_groups.types import Receive, Scope, Send

from .support.codecs import PlainCookie

USERS = InMemoryUsers(
    [
        SimpleUser(1, "greg", frozenset({"boys"})),
        SimpleUser(2, "chuck", frozenset({"boys"})),
        SimpleUser(3, "amanda", frozenset({"girls"})),
    ]
)


EVENTS: list[tuple[str, Any]] = []


class Chat(WsView):
    login_required = True
    groups = ["lobby"]

    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        EVENTS.append(("connect", self.user.username))
        await self.accept()

    async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
        text = self.kwargs.get("text")
        if text == "boom":
            raise RuntimeError("handler bug")
        if text == "bye":
            await self.close(4000, "bye")
            return
        if text and text.startswith("to:"):
            group, _, body = text[3:].partition(":")
            await self.registry.send_group(group, {"from": self.user.username, "text": body})
            return
        await self.send_json({"echo": text})

    async def on_disconnect(self, scope: Scope, receive: Receive, send: Send) -> None:
        EVENTS.append(("disconnect", self.close_code))


class TextOnly(WsView):
    accepts = "text"
    max_message_size = 1024

    async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.send_text(self.kwargs["text"])


@pytest.fixture
async def registry() -> Any:
    async with Registry() as reg:
        yield reg


def app_for(view: type[WsView], registry: Registry, **options: Any) -> Any:
    return GroupsMiddleware(
        view.as_asgi(), registry, sessions=PlainCookie(), users=USERS, **options
    )


def client(app: Any, user_id: int | None = None, **kw: Any) -> WebSocketTestClient:
    cookies = {"session": str(user_id)} if user_id is not None else None
    return WebSocketTestClient(app, cookies=cookies, **kw)


async def test_groups_joined_and_routing(registry: Registry) -> None:
    app = app_for(Chat, registry)
    async with client(app, 1) as greg, client(app, 1) as greg2, client(app, 3) as amanda:
        assert await registry.presence("boys") == {"1": 2}
        assert await registry.presence("lobby") == {"1": 2, "3": 1}
        await amanda.send_text("to:boys:hi boys")
        for tab in (greg, greg2):
            assert await tab.receive_json() == {"from": "amanda", "text": "hi boys"}
        assert await amanda.receive_nothing()
        await greg.send_text("ping")
        assert await greg.receive_json() == {"echo": "ping"}
        assert await greg2.receive_nothing()
    assert registry.stats().connections == 0


async def test_login_required_refuses_anonymous_with_403(registry: Registry) -> None:
    EVENTS.clear()
    app = app_for(Chat, registry)
    for ws in (client(app), client(app, 99)):  # no cookie; cookie for an unknown user
        assert await ws.connect() is False
        assert ws.status == 403
    assert EVENTS == []  # the view never ran


async def test_on_disconnect_once_after_client_drop(registry: Registry) -> None:
    EVENTS.clear()
    async with client(app_for(Chat, registry), 1):
        pass
    assert EVENTS == [("connect", "greg"), ("disconnect", 1000)]


async def test_on_disconnect_once_after_server_close(registry: Registry) -> None:
    EVENTS.clear()
    async with client(app_for(Chat, registry), 1) as ws:
        await ws.send_text("bye")
        assert await ws.receive_close() == 4000
    assert EVENTS == [("connect", "greg"), ("disconnect", 4000)]
    assert registry.stats().connections == 0


async def test_exception_in_hook_closes_1011_and_logs(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    EVENTS.clear()
    app = app_for(Chat, registry)
    async with client(app, 1) as bad, client(app, 2) as other:
        with caplog.at_level(logging.ERROR, "asgi_groups"):
            await bad.send_text("boom")
            assert await bad.receive_close() == 1011
        assert "handler bug" in caplog.text
        await other.send_text("still here")
        assert await other.receive_json() == {"echo": "still here"}
    assert EVENTS.count(("disconnect", 1011)) == 1
    assert registry.stats().connections == 0


async def test_oversized_frame_closes_1009(registry: Registry) -> None:
    async with client(app_for(TextOnly, registry), 1) as ws:
        await ws.send_text("x" * 1025)
        assert await ws.receive_close() == 1009


async def test_multibyte_text_measured_in_bytes(registry: Registry) -> None:
    async with client(app_for(TextOnly, registry), 1) as ws:
        await ws.send_text("é" * 600)  # 600 chars, 1200 bytes
        assert await ws.receive_close() == 1009


async def test_binary_on_text_view_closes_1003(registry: Registry) -> None:
    async with client(app_for(TextOnly, registry), 1) as ws:
        await ws.send_bytes(b"\xff\xfe")
        assert await ws.receive_close() == 1003


async def test_stray_connect_is_ignored(registry: Registry) -> None:
    async with client(app_for(TextOnly, registry), 1) as ws:
        await ws._communicator.send_input({"type": "websocket.connect"})
        await ws.send_text("after")
        assert await ws.receive_text() == "after"


@pytest.mark.parametrize(
    ("origin", "allowed", "ok"),
    [
        ("http://testserver", None, True),
        ("http://evil.example", None, False),
        ("https://testserver", None, False),  # scheme differs
        (None, None, False),
        ("null", None, False),
        ("", None, False),
        ("http://[::1", None, False),
        ("https://chat.example.com", [".example.com"], True),
        ("https://example.com.evil.io", [".example.com"], False),
        ("http://anything.io", ["*"], True),
    ],
)
async def test_origin_policy(
    registry: Registry, origin: str | None, allowed: list[str] | None, ok: bool
) -> None:
    ws = client(app_for(TextOnly, registry, allowed_origins=allowed), 1, origin=origin)
    assert await ws.connect() is ok
    if ok:
        await ws.disconnect()
    else:
        assert ws.status == 403


async def test_missing_origin_allowed_when_configured(registry: Registry) -> None:
    app = app_for(TextOnly, registry, allow_missing_origin=True)
    async with client(app, 1, origin=None) as ws:
        await ws.send_text("cli client")
        assert await ws.receive_text() == "cli client"


async def test_http_passes_through_untouched(registry: Registry) -> None:
    seen: list[Scope] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    mw = GroupsMiddleware(inner, registry)
    scope = {"type": "http", "path": "/", "headers": []}
    await mw(scope, None, None)  # type: ignore[arg-type]
    assert seen == [scope] and seen[0] is scope


async def test_no_leak_after_1000_cycles(registry: Registry) -> None:
    app = app_for(Chat, registry)
    for i in range(1000):
        async with client(app, 1 + i % 3) as ws:
            if i % 100 == 0:
                await ws.send_text("ping")
                await ws.receive_json()
    stats = registry.stats()
    assert (stats.connections, stats.users, stats.groups) == (0, 0, 0)
    assert registry.connections() == []


class Resumable(RecoverableView):
    groups = ["lobby"]


async def test_a_recoverable_view_sends_envelopes_with_positions() -> None:
    """In-process: the view's connection is recoverable, so a publish arrives in an envelope."""
    async with Registry(history=HistoryLimits()) as registry:
        app = Resumable.as_asgi(registry)
        async with WebSocketTestClient(app) as ws:
            await ws.send_json({"type": "ag.hello"})
            welcome = await ws.receive_json()
            assert welcome["type"] == "ag.welcome" and "g:lobby" in welcome["channels"]
            await registry.send_group("lobby", {"n": 1})
            assert await ws.receive_json() == {
                "type": "ag.message",
                "channel": "g:lobby",
                "epoch": welcome["channels"]["g:lobby"]["epoch"],
                "offset": 1,
                "data": {"n": 1},
            }
