"""The chat on Quart: ``uvicorn examples.chat.quart_app:app`` (or ``hypercorn``).

Logins are kept in Quart's own ``session``; ``install`` reads that cookie with the keys, name
and lifetime in ``app.config`` and serves the view ahead of Quart's router. The browser client
the page imports is served ahead of Quart too, by ``ClientScript`` (``with_client_script``).
"""

from __future__ import annotations

from typing import cast

from quart import Quart, ResponseReturnValue, redirect, request, session

from asgi_groups.adapters.quart import current_registry, install
from asgi_groups.health import with_routes
from asgi_groups.metrics import operations_routes
from asgi_groups.types import ASGIApp
from examples.chat.common import (
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
    with_client_script,
)


def create_app(config: ChatConfig | None = None) -> Quart:
    """The chat app for ``config`` (default: the ``CHAT_*`` environment variables)."""
    config = config or ChatConfig.from_env()
    store = config.store()
    registry = config.registry()
    amqp_source(config, registry, store)  # when CHAT_AMQP_URL is set
    prepared = PreparedStore(store)  # by the lifespan, else by the first request
    app = Quart(__name__)
    app.config["SECRET_KEY"] = config.secret_key

    @app.before_serving
    async def open_store() -> None:
        await prepared()

    @app.after_serving
    async def close_store() -> None:
        await store.close()

    @app.get("/login")
    async def login_page() -> ResponseReturnValue:
        return page("login.html")

    @app.post("/login")
    async def login() -> ResponseReturnValue:
        status, body, user = await check_login(store, await request.get_data())
        if user is not None:
            session.clear()
            session.update(session_for(user))
        return body, status

    @app.post("/logout")
    async def logout() -> ResponseReturnValue:
        user_id = session.get(SESSION_KEY)
        session.clear()
        await log_out(current_registry(), user_id)
        return {"success": "Logged out"}

    @app.post("/announce")
    async def send_announcement() -> ResponseReturnValue:
        payload = await request.get_data()
        status, body = await announce(current_registry(), store, dict(session), payload)
        return body, status

    @app.get("/")
    async def index() -> ResponseReturnValue:
        if await store.load(dict(session)) is None:
            return redirect("/login", 303)
        return page("chat.html")

    install(
        app,
        registry,
        users=store,
        allowed_origins=config.allowed_origins,
        revalidate_every=config.revalidate_every,
        views={WS_PATH: ChatView.as_asgi(store=store)},
    )
    served = with_client_script(cast(ASGIApp, app.asgi_app))
    routed = with_routes(served, operations_routes(registry))
    app.asgi_app = prepared.gate(routed)  # type: ignore[method-assign,assignment]
    return app


app = create_app()
