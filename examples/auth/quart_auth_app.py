"""quart-auth with a group-messaging socket: ``uvicorn examples.auth.quart_auth_app:app``.

``POST /login`` (a form: ``username``, ``password``) logs in with quart-auth's ``login_user``,
which sets its signed ``QUART_AUTH`` cookie. ``QuartAuthCookie`` reads that cookie as quart-auth
signs it, and the user loader gets ``{"auth_id": ...}``. A cookie: a socket needs a same-site
Origin.
"""

from __future__ import annotations

import os

from quart import Quart, request
from quart_auth import AuthUser, QuartAuth, login_user

from asgi_groups.adapters.quart import install
from asgi_groups.credentials import QuartAuthCookie

from .common import Chat, check_password, demo_store

SECRET_KEY = os.environ.get("SECRET_KEY", "dev-only-secret-change-me-0123456789")


def create_app(*, secret_key: str = SECRET_KEY, cookie_secure: bool = True) -> Quart:
    app = Quart(__name__)
    app.config["SECRET_KEY"] = secret_key
    app.config["QUART_AUTH_COOKIE_SECURE"] = cookie_secure
    QuartAuth(app)

    @app.post("/login")
    async def login() -> tuple[dict[str, str], int]:
        form = await request.form
        name, password = form.get("username", ""), form.get("password", "")
        if not check_password(name, password):
            return {"error": "Invalid username or password"}, 401
        login_user(AuthUser(name))
        return {"user": name}, 200

    users = demo_store(session_key="auth_id")
    install(app, sessions=QuartAuthCookie.from_app(app), users=users, views={"/ws": Chat.as_asgi()})
    return app


app = create_app()
