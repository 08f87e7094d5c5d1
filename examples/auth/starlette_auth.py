"""Starlette's ``AuthenticationMiddleware`` with the app's own backend: asgi_groups keeps the
``scope["user"]`` it set. ``uvicorn examples.auth.starlette_auth:app``.

``POST /login`` (a form: ``username``, ``password``) puts the username in the session cookie;
the app's backend turns that session into its ``Member`` (Starlette's ``SimpleUser`` with the
user's groups). ``GroupsMiddleware`` sits inside both middlewares, so the user is already
there when a socket opens: with no ``users=``, it is used as it is. The session is a cookie: a
socket needs a same-site Origin.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from asgi_groups import GroupsMiddleware, Registry
from asgi_groups.adapters.starlette import lifespan

from .common import DEMO_USERS, Chat, check_password

SECRET_KEY = os.environ.get("SECRET_KEY", "dev-only-secret-change-me-0123456789")


class Member(SimpleUser):
    """The app's user: Starlette's ``SimpleUser`` (a ``username``, no ``id``) and its groups."""

    def __init__(self, username: str, groups: frozenset[str]) -> None:
        super().__init__(username)
        self.groups = groups


class SessionBackend(AuthenticationBackend):
    """The app's backend: the session's ``username`` names a member."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, Member] | None:
        name = conn.session.get("username")
        known = DEMO_USERS.get(name) if isinstance(name, str) else None
        if known is None:
            return None
        return AuthCredentials(["authenticated"]), Member(str(name), known[1])


async def login(request: Request) -> Response:
    form = await request.form()
    name, password = str(form.get("username", "")), str(form.get("password", ""))
    if not check_password(name, password):
        return JSONResponse({"error": "Invalid username or password"}, status_code=401)
    request.session["username"] = name
    return Response(status_code=204)


def create_app(*, secret_key: str = SECRET_KEY) -> Starlette:
    registry = Registry()
    return Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            WebSocketRoute("/ws", Chat.as_asgi()),
        ],
        middleware=[
            Middleware(SessionMiddleware, secret_key=secret_key),
            Middleware(AuthenticationMiddleware, backend=SessionBackend()),
            Middleware(GroupsMiddleware, registry=registry),  # inside: the user is set by then
        ],
        lifespan=lifespan(registry),
    )


app = create_app()
