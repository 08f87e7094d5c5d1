"""The chat on Starlette: ``uvicorn examples.chat.starlette_app:app``.

Routes, middleware and lifespan are declared up front: the view is a ``WebSocketRoute``, the
browser client the page imports a ``Route`` to ``ClientScript``,
``GroupsMiddleware`` sits inside Starlette's ``SessionMiddleware`` (so the session it decoded is
the one used), and the registry runs around the app's own lifespan.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute

from asgi_groups import GroupsMiddleware
from asgi_groups.adapters.starlette import current_registry, lifespan
from asgi_groups.browser import ClientScript
from asgi_groups.metrics import operations_routes
from asgi_groups.sessions import StarletteSessionCookie
from examples.chat.common import (
    CLIENT_SCRIPT_PATH,
    SESSION_KEY,
    WS_PATH,
    ChatConfig,
    ChatView,
    PreparedStore,
    amqp_source,
    announce,
    check_login,
    log_out,
    page,
    session_for,
)


def create_app(config: ChatConfig | None = None) -> Starlette:
    """The chat app for ``config`` (default: the ``CHAT_*`` environment variables)."""
    config = config or ChatConfig.from_env()
    store = config.store()
    registry = config.registry()
    amqp_source(config, registry, store)  # when CHAT_AMQP_URL is set
    prepared = PreparedStore(store)  # by the lifespan, else by the first request

    @contextlib.asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        await prepared()
        yield
        await store.close()

    async def login_page(request: Request) -> Response:
        return HTMLResponse(page("login.html"))

    async def login(request: Request) -> Response:
        status, body, user = await check_login(store, await request.body())
        if user is not None:
            request.session.clear()
            request.session.update(session_for(user))
        return JSONResponse(body, status_code=status)

    async def logout(request: Request) -> Response:
        user_id = request.session.get(SESSION_KEY)
        request.session.clear()
        await log_out(current_registry(request), user_id)
        return JSONResponse({"success": "Logged out"})

    async def send_announcement(request: Request) -> Response:
        registry = current_registry(request)
        status, body = await announce(registry, store, request.session, await request.body())
        return JSONResponse(body, status_code=status)

    async def index(request: Request) -> Response:
        if await store.load(request.session) is None:
            return RedirectResponse("/login", status_code=303)
        return HTMLResponse(page("chat.html"))

    return Starlette(
        routes=[
            Route("/", index),
            Route("/login", login_page, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/announce", send_announcement, methods=["POST"]),
            Route(CLIENT_SCRIPT_PATH, ClientScript()),
            WebSocketRoute(WS_PATH, ChatView.as_asgi(store=store)),
            *(Route(path, probe) for path, probe in operations_routes(registry).items()),
        ],
        middleware=[
            Middleware(prepared.gate),
            Middleware(SessionMiddleware, secret_key=config.secret_key),
            Middleware(
                GroupsMiddleware,
                registry=registry,
                sessions=StarletteSessionCookie(config.secret_key),
                users=store,
                allowed_origins=config.allowed_origins,
                revalidate_every=config.revalidate_every,
            ),
        ],
        lifespan=lifespan(registry, app_lifespan),
    )


app = create_app()
