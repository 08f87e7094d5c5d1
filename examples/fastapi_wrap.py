"""An existing FastAPI app gains group messaging in one call: ``uvicorn examples.fastapi_wrap:app``.

Everything above ``install`` stands for the app you already have: its sessions, its login, its
own lifespan. Below it, a ``WsView`` and an ``@app.websocket`` handler, side by side.
"""

from __future__ import annotations

import contextlib
import hmac
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.middleware.sessions import SessionMiddleware

from asgi_groups import InMemoryUsers, SimpleUser, WsView
from asgi_groups.adapters.fastapi import Connection, CurrentUser, add_view, install
from asgi_groups.sessions import StarletteSessionCookie
from asgi_groups.types import Receive, Scope, Send

SECRET_KEY = os.environ.get("SECRET_KEY", "dev-only-secret-change-me")

# The app's users: here a fixed list standing in for its real user table.
USERS = InMemoryUsers(
    [SimpleUser(1, "greg", frozenset({"boys"})), SimpleUser(2, "amanda", frozenset({"girls"}))]
)
PASSWORDS = {"greg": "Greg", "amanda": "Amanda"}
IDS = {"greg": 1, "amanda": 2}


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.started = True  # the app's own startup work
    yield
    app.state.started = False


app = FastAPI(lifespan=lifespan)
app.add_middleware(SessionMiddleware, secret_key=SECRET_KEY)


class Login(BaseModel):
    username: str
    password: str


@app.post("/login")
async def login(body: Login, request: Request) -> JSONResponse:
    expected = PASSWORDS.get(body.username, "\0").encode()
    if not hmac.compare_digest(expected, body.password.encode()):
        return JSONResponse({"error": "Invalid username or password"}, status_code=401)
    request.session["user_id"] = IDS[body.username]
    return JSONResponse({"success": f"Welcome back, {body.username}"})


# -- asgi_groups: one call, then a view and a handler -------------------------------------------

registry = install(app, sessions=StarletteSessionCookie(SECRET_KEY), users=USERS)


class Room(WsView):
    """Each text frame goes to every group of its sender: ``{"from": ..., "text": ...}``."""

    login_required = True
    accepts = "text"

    async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = {"from": self.user.username, "text": self.kwargs["text"]}
        for group in sorted(self.user.groups):
            await self.registry.send_group(group, message)


add_view(app, "/room", Room)


@app.websocket("/ws")
async def ws(websocket: WebSocket, user: CurrentUser, conn: Connection) -> None:
    """The same, as a FastAPI handler: the dependencies log in, join and clean up."""
    await conn.send({"hello": user.username, "groups": sorted(conn.groups)})
    async for text in websocket.iter_text():
        for group in sorted(conn.groups):
            await registry.send_group(group, {"from": user.username, "text": text})
