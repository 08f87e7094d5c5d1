"""FastAPI's OAuth2/JWT tutorial, with a group-messaging socket reading the same tokens.

``uvicorn examples.auth.fastapi_jwt:app``. ``POST /token`` (a form: ``username``,
``password``) answers ``{"access_token": <JWT>, "token_type": "bearer"}`` as in the tutorial;
``POST /login`` puts the same JWT in an HttpOnly cookie for pages. The socket at ``/ws`` takes
the token in ``Authorization: Bearer`` (services, mobile apps), ``?access_token=`` (a browser
script) or the ``access_token`` cookie (a page; a same-site Origin is then required), and is
closed with 4401 when the token expires.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jwt
from fastapi import Depends, FastAPI, HTTPException, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from asgi_groups.adapters.fastapi import add_view, install
from asgi_groups.credentials import BearerToken, CookieToken, QueryToken
from asgi_groups.tokens import JwtVerifier

from .common import Chat, check_password, demo_store

SECRET_KEY = os.environ.get("SECRET_KEY", "dev-only-secret-change-me-0123456789")
ALGORITHM = "HS256"
ACCESS_TOKEN_EXPIRE = timedelta(minutes=30)
COOKIE_NAME = "access_token"
Form = Annotated[OAuth2PasswordRequestForm, Depends()]


def create_access_token(
    data: dict[str, Any], expires_delta: timedelta | None = None, secret_key: str = SECRET_KEY
) -> str:
    """The tutorial's token: ``data`` (``sub``: the username) and an ``exp``."""
    claims = dict(data)
    claims["exp"] = datetime.now(UTC) + (expires_delta or timedelta(minutes=15))
    return jwt.encode(claims, secret_key, algorithm=ALGORITHM)


def create_app(
    *,
    secret_key: str = SECRET_KEY,
    token_lifetime: timedelta = ACCESS_TOKEN_EXPIRE,
    expiry_every: float = 1.0,
    cookie_secure: bool = True,
) -> FastAPI:
    """The app; ``expiry_every``: seconds within which an expired token's socket is closed."""
    app = FastAPI()

    def issue(form: OAuth2PasswordRequestForm) -> str:
        if not check_password(form.username, form.password):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="Incorrect username or password",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return create_access_token({"sub": form.username}, token_lifetime, secret_key)

    @app.post("/token")
    async def login_for_access_token(form: Form) -> dict[str, str]:
        return {"access_token": issue(form), "token_type": "bearer"}

    @app.post("/login", status_code=status.HTTP_204_NO_CONTENT)
    async def login_with_cookie(form: Form, response: Response) -> None:
        response.set_cookie(
            COOKIE_NAME,
            issue(form),
            max_age=int(token_lifetime.total_seconds()),
            httponly=True,
            samesite="lax",
            secure=cookie_secure,
        )

    # -- asgi_groups: the same tokens identify the socket ---------------------------------------
    users = demo_store(session_key="sub")
    verifier = JwtVerifier(secret_key, algorithms=[ALGORITHM])
    auth = [
        BearerToken(verifier),
        QueryToken(verifier),
        CookieToken(verifier, cookie_name=COOKIE_NAME),
    ]
    install(app, auth=auth, users=users, expiry_every=expiry_every)
    add_view(app, "/ws", Chat)
    return app


app = create_app()
