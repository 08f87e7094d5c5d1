"""A ``WsView`` on Starlette routes: ``uvicorn examples.starlette_routes:app``.

A view is an ASGI app, so ``WebSocketRoute`` and ``Mount`` serve it as they are. No login here:
everyone is anonymous and joins the lobby; ``/rooms/{name}`` joins that room too.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, WebSocketRoute

from asgi_groups import GroupsMiddleware, Registry, WsView
from asgi_groups.adapters.starlette import lifespan
from asgi_groups.types import Receive, Scope, Send

registry = Registry()


class Lobby(WsView):
    """Relays each text frame to everyone in the lobby."""

    groups = ("lobby",)
    accepts = "text"
    room = "lobby"

    async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.registry.send_group(self.room, {"room": self.room, "text": self.kwargs["text"]})


class Room(Lobby):
    """The room named in the path (``/rooms/{name}``), plus the lobby."""

    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.room = "room:" + str(scope["path_params"]["name"])[:50]
        await self.accept()
        await self.join(self.room)


app = Starlette(
    routes=[
        WebSocketRoute("/ws", Lobby.as_asgi()),
        Mount("/rooms", routes=[WebSocketRoute("/{name}", Room.as_asgi())]),
    ],
    middleware=[Middleware(GroupsMiddleware, registry=registry)],
    lifespan=lifespan(registry),
)
