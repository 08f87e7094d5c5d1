"""Sending from outside any view: ``POST /notify/{topic}`` → every socket listening to it.

``uvicorn examples.notify:app``; browsers listen on ``/ws?topic=news``; a backend service calls
``POST /notify/news`` with a JSON body and ``Authorization: Bearer $NOTIFY_TOKEN``. The handler
is plain HTTP: it only needs the registry. With ``NOTIFY_REDIS_URL`` set, the app's processes
and ``examples/notify_script.py`` share one Redis, so a send from any of them reaches all.
"""

from __future__ import annotations

import hmac
import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from asgi_groups import GroupsMiddleware, Registry, WsView
from asgi_groups.adapters.starlette import lifespan
from asgi_groups.types import Receive, Scope, Send

TOPICS = ("news", "alerts")
TOKEN = os.environ.get("NOTIFY_TOKEN", "")  # unset: POST /notify is disabled

registry = Registry(os.environ.get("NOTIFY_REDIS_URL") or None)


class Listen(WsView):
    """Joins the known topics named in the query: ``/ws?topic=news&topic=alerts``."""

    accepts = "text"

    def initial_groups(self) -> list[str]:
        return [t for t in dict.fromkeys(self.request.query.getlist("topic")) if t in TOPICS]

    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.accept()
        await self.send_json({"listening": self.initial_groups()})


async def notify(request: Request) -> JSONResponse:
    """Send the JSON body to everyone listening to the topic, in every process."""
    if not TOKEN:
        return JSONResponse({"error": "set NOTIFY_TOKEN to enable notifications"}, status_code=503)
    given = request.headers.get("authorization", "").removeprefix("Bearer ").encode()
    if not hmac.compare_digest(given, TOKEN.encode()):
        return JSONResponse({"error": "unauthorized"}, status_code=401)
    topic = request.path_params["topic"]
    if topic not in TOPICS:
        return JSONResponse({"error": f"no topic {topic!r}"}, status_code=404)
    try:
        data = await request.json()
    except ValueError:
        return JSONResponse({"error": "send a JSON body"}, status_code=400)
    await registry.send_group(topic, {"topic": topic, "data": data})
    return JSONResponse({"sent": topic}, status_code=202)


app = Starlette(
    routes=[
        Route("/notify/{topic}", notify, methods=["POST"]),
        WebSocketRoute("/ws", Listen.as_asgi()),
    ],
    middleware=[Middleware(GroupsMiddleware, registry=registry)],
    lifespan=lifespan(registry),
)
