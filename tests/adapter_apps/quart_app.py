"""A Quart app for the adapter tests (module-level ``app`` for hypercorn / uvicorn children)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from quart import Quart, copy_current_websocket_context, request, session, websocket

from asgi_groups import Registry
from asgi_groups.adapters.quart import (
    current_registry,
    current_user,
    install,
    joined,
    login_required,
)

from .common import OLD_SECRET, SECRET, USERS, Events, Hub, hello, relay

COOKIE_NAME = "qsession"
_tasks: set[asyncio.Task[None]] = set()


def create_app() -> Quart:
    """Registry in ``app.extensions["asgi_groups"]``, startup log in ``app.config["EVENTS"]``."""
    app = Quart(__name__)
    app.config.update(
        SECRET_KEY=SECRET, SECRET_KEY_FALLBACKS=[OLD_SECRET], SESSION_COOKIE_NAME=COOKIE_NAME
    )
    registry = Registry()
    events = Events(registry)
    app.config["EVENTS"] = events
    app.before_serving(_sync(events.startup))
    app.after_serving(_sync(events.shutdown))

    @app.post("/login")
    async def login() -> dict[str, Any]:
        session["user_id"] = (await request.get_json())["user_id"]
        return {"ok": True}

    @app.post("/logout")
    async def logout() -> dict[str, Any]:
        user_id = session.pop("user_id", None)
        if user_id is not None:
            await current_registry().disconnect_user(user_id)
        return {"ok": True}

    @app.websocket("/ws")
    @login_required
    async def ws() -> None:
        async with joined(["lobby"]) as conn:
            user = current_user()
            await conn.send(hello(user, conn.groups))
            while True:
                text = await websocket.receive()
                if json.loads(text).get("later"):
                    task = asyncio.create_task(copy_current_websocket_context(_reply_later)())
                    _tasks.add(task)
                    task.add_done_callback(_tasks.discard)
                else:
                    await relay(current_registry(), user, str(text))

    install(app, registry, users=USERS, views={"/view": Hub.as_asgi()})
    return app


async def _reply_later() -> None:
    """Runs in a spawned task: the copied context gives it the ``websocket`` global."""
    await asyncio.sleep(0.01)
    await websocket.send(json.dumps({"later": current_user().username}))


def _sync(func: Any) -> Any:
    async def run() -> None:
        func()

    return run


app = create_app()
