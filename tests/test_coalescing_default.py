"""Coalescing in the library's own protocol: JSON frames joined by "\n", split back by the
official clients in order; anything else, and plain views, sent as they are."""

from __future__ import annotations

from typing import Any, ClassVar

from asgi_groups import GroupsMiddleware, InMemoryUsers, Registry, SimpleUser, WsView
from asgi_groups.client import _split
from asgi_groups.limits import OFFICIAL_CLIENT_COALESCE
from asgi_groups.recoverable import RecoverableView
from asgi_groups.testing import WebSocketTestClient
from asgi_groups.types import Receive, Scope, Send

from .support.codecs import PlainCookie

PEOPLE = [SimpleUser(1, "greg", frozenset())]


class Packed(RecoverableView):
    groups: ClassVar[list[str]] = ["lobby"]
    coalesce = OFFICIAL_CLIENT_COALESCE

    async def on_message(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.send_text("raw\ntext")  # the app's own frame: never joined
        await self.send_text("raw\ntext")


class Plain(WsView):
    groups: ClassVar[list[str]] = ["lobby"]


def app(registry: Registry, view: type[WsView]) -> Any:
    return GroupsMiddleware(
        view.as_asgi(), registry, sessions=PlainCookie(), users=InMemoryUsers(PEOPLE)
    )


async def frames(ws: WebSocketTestClient, documents: int) -> list[str]:
    """Text frames until ``documents`` JSON documents (as the official client splits them)."""
    texts: list[str] = []
    while sum(len(_split(t)) for t in texts) < documents:
        texts.append(await ws.receive_text())
    return texts


async def test_a_recoverable_client_gets_every_message_in_order_from_joined_frames() -> None:
    async with Registry() as registry:
        ws = WebSocketTestClient(app(registry, Packed), cookies={"session": "1"})
        async with ws:
            await ws.send_json({"type": "ag.hello"})
            welcome = _split(await ws.receive_text())
            assert welcome[0][1]["type"] == "ag.welcome"
            for n in range(60):  # a burst: queued faster than written
                await registry.send_group("lobby", {"n": n})
            texts = await frames(ws, 60)
            docs = [value for t in texts for ok, value in _split(t)]
            assert all(doc["type"] == "ag.message" for doc in docs)
            assert [doc["data"] for doc in docs] == [{"n": n} for n in range(60)]
            assert len(texts) < 60 and max(t.count("\n") + 1 for t in texts) <= 16
            await ws.send_json({"hi": 1})  # the app answers with raw text: sent as it is
            assert [await ws.receive_text(), await ws.receive_text()] == ["raw\ntext"] * 2


async def test_plain_views_are_never_coalesced() -> None:
    async with Registry() as registry:
        ws = WebSocketTestClient(app(registry, Plain), cookies={"session": "1"})
        async with ws:
            for n in range(40):
                await registry.send_group("lobby", {"n": n})
            texts = [await ws.receive_text() for _ in range(40)]
            assert texts == [f'{{"n":{n}}}' for n in range(40)]
