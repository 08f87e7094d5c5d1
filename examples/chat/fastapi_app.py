"""The chat on FastAPI: ``uvicorn examples.chat.fastapi_app:app``.

The app is written as any FastAPI app; one ``install`` call adds the WebSocket side. Logins are
kept by Starlette's ``SessionMiddleware`` (``session["user_id"]``), which the socket reads back.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import Route

from asgi_groups.adapters.fastapi import CurrentRegistry, add_view, install
from asgi_groups.browser import ClientScript
from asgi_groups.metrics import operations_routes
from asgi_groups.sessions import StarletteSessionCookie
from examples.chat.common import (
    CLIENT_SCRIPT_PATH,
    SESSION_KEY,
    WS_PATH,
    ChatConfig,
    PreparedStore,
    amqp_source,
    announce,
    chat_view,
    check_login,
    log_out,
    page,
    session_for,
)


def create_app(config: ChatConfig | None = None) -> FastAPI:
    """The chat app for ``config`` (default: the ``CHAT_*`` environment variables)."""
    config = config or ChatConfig.from_env()
    store = config.store()
    registry = config.registry()
    amqp_source(config, registry, store)  # when CHAT_AMQP_URL is set
    prepared = PreparedStore(store)  # by the lifespan, else by the first request

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await prepared()
        yield
        await store.close()

    app = FastAPI(title="asgi_groups chat", lifespan=lifespan)
    app.add_middleware(SessionMiddleware, secret_key=config.secret_key)

    @app.get("/login", response_class=HTMLResponse)
    async def login_page() -> str:
        return page("login.html")

    @app.post("/login")
    async def login(request: Request) -> JSONResponse:
        status, body, user = await check_login(store, await request.body())
        if user is not None:
            request.session.clear()
            request.session.update(session_for(user))
        return JSONResponse(body, status_code=status)

    @app.post("/logout")
    async def logout(request: Request, registry: CurrentRegistry) -> JSONResponse:
        user_id = request.session.get(SESSION_KEY)
        request.session.clear()
        await log_out(registry, user_id)
        return JSONResponse({"success": "Logged out"})

    @app.post("/announce")
    async def send_announcement(request: Request, registry: CurrentRegistry) -> JSONResponse:
        status, body = await announce(registry, store, request.session, await request.body())
        return JSONResponse(body, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> Response:
        if await store.load(request.session) is None:
            return RedirectResponse("/login", status_code=303)
        return HTMLResponse(page("chat.html"))

    app.router.routes.append(Route(CLIENT_SCRIPT_PATH, ClientScript()))  # an ASGI app
    app.router.routes.extend(Route(p, probe) for p, probe in operations_routes(registry).items())
    install(
        app,
        registry,
        sessions=StarletteSessionCookie(config.secret_key),
        users=store,
        allowed_origins=config.allowed_origins,
        revalidate_every=config.revalidate_every,
    )
    add_view(app, WS_PATH, chat_view(store))
    app.add_middleware(prepared.gate)  # outermost: before GroupsMiddleware loads a user
    return app


app = create_app()
