"""Revocation: disconnect_user and periodic revalidation close a user's sockets with 4401."""

from __future__ import annotations

from typing import Any

from asgi_groups import GroupsMiddleware, InMemoryUsers, Registry, SimpleUser, WsView, codes
from asgi_groups.testing import WebSocketTestClient

from .core_app import PlainCookie


class Room(WsView):
    login_required = True


def build(registry: Registry, users: InMemoryUsers, **kw: Any) -> GroupsMiddleware:
    return GroupsMiddleware(Room.as_asgi(), registry, sessions=PlainCookie(), users=users, **kw)


def tab(app: Any, user_id: int) -> WebSocketTestClient:
    return WebSocketTestClient(app, cookies={"session": str(user_id)})


async def test_disconnect_user_closes_every_tab_of_that_user_only() -> None:
    users = InMemoryUsers([SimpleUser(1, "greg"), SimpleUser(2, "chuck")])
    async with Registry() as registry:
        app = build(registry, users)
        async with tab(app, 1) as a, tab(app, 1) as b, tab(app, 2) as c:
            await registry.disconnect_user(1)
            assert await a.receive_close() == codes.UNAUTHORIZED
            assert await b.receive_close() == codes.UNAUTHORIZED
            assert await c.receive_nothing()
        assert registry.stats().connections == 0


async def test_deactivated_user_is_closed_within_the_revalidation_interval() -> None:
    users = InMemoryUsers([SimpleUser(1, "greg"), SimpleUser(2, "chuck")])
    async with Registry() as registry:
        app = build(registry, users, revalidate_every=0.05)
        async with tab(app, 1) as greg, tab(app, 2) as chuck:
            users.remove(1)  # deactivated / deleted in the store
            greg.timeout = 2.0  # a few intervals at most
            assert await greg.receive_close() == codes.UNAUTHORIZED
            assert await chuck.receive_nothing(0.2)


async def test_revalidate_keeps_valid_sockets() -> None:
    users = InMemoryUsers([SimpleUser(1, "greg")])
    async with Registry() as registry:
        app = build(registry, users, revalidate_every=3600)
        async with tab(app, 1) as greg:
            assert await app.revalidate() == 0
            assert await greg.receive_nothing()
            users.add(SimpleUser(1, "greg-renamed"))  # same id: still the same user
            assert await app.revalidate() == 0
