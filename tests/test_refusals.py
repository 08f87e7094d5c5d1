"""One refusal path: a ``WsView`` and every adapter refuse a handshake the same way (HTTP 403,
same body), and "logged in" means ``user.is_authenticated``, never the user object's truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from quart import Quart
from quart.testing.connections import WebsocketResponseError
from starlette.testclient import TestClient, WebSocketDenialResponse
from websockets.exceptions import InvalidStatus

from asgi_groups import GroupsMiddleware, Registry, WsView
from asgi_groups.adapters import fastapi as fastapi_adapter
from asgi_groups.adapters import quart as quart_adapter
from asgi_groups.testing import WebSocketTestClient
from asgi_groups.types import ASGIApp, Receive, Scope, Send

from .adapter_apps.common import ws
from .adapter_apps.fastapi_app import make_app as fastapi_app
from .adapter_apps.quart_app import create_app as quart_app
from .adapter_apps.starlette_app import make_app as starlette_app
from .support.servers import serve

REFUSED_BODY = b"Forbidden: login required"


@dataclass(frozen=True)
class TruthyAnonymous:
    """A user object that is truthy but not logged in (e.g. a model row for a guest)."""

    id: Any = None
    username: str = "guest"
    groups: frozenset[str] = field(default_factory=frozenset)
    is_authenticated: bool = False

    def __bool__(self) -> bool:
        return True


class SetUser:
    """An outer middleware (as an app's own auth would be) that sets ``scope["user"]``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope["user"] = TruthyAnonymous()
        await self.app(scope, receive, send)


class Members(WsView):
    login_required = True
    reached = 0

    async def on_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        Members.reached += 1
        await self.accept()


async def test_login_required_view_refuses_a_truthy_user_that_is_not_authenticated() -> None:
    Members.reached = 0
    async with Registry() as registry:
        app = SetUser(GroupsMiddleware(Members.as_asgi(), registry))
        client = WebSocketTestClient(app)
        assert await client.connect() is False
        assert client.status == 403
    assert Members.reached == 0


def test_fastapi_current_user_refuses_a_truthy_user_that_is_not_authenticated() -> None:
    app = FastAPI()
    reached: list[str] = []

    @app.websocket("/ws")
    async def endpoint(user: fastapi_adapter.CurrentUser) -> None:
        reached.append(user.username)

    fastapi_adapter.install(app)
    app.add_middleware(SetUser)
    with TestClient(app) as client:
        with pytest.raises(WebSocketDenialResponse) as refused:
            client.websocket_connect("/ws", headers={"origin": "http://testserver"}).__enter__()
        assert refused.value.status_code == 403
        assert refused.value.content == REFUSED_BODY
    assert reached == []


async def test_quart_login_required_refuses_a_truthy_user_that_is_not_authenticated() -> None:
    app = Quart(__name__)
    app.config["SECRET_KEY"] = "refusal-tests"
    reached: list[str] = []

    @app.websocket("/ws")
    @quart_adapter.login_required
    async def endpoint() -> None:
        reached.append(quart_adapter.current_user().username)

    quart_adapter.install(app)
    app.asgi_app = SetUser(app.asgi_app)  # type: ignore[method-assign,assignment]
    async with app.test_app():
        sock = app.test_client().websocket(
            "/ws",
            headers={"Origin": "http://localhost"},
            scope_base={"extensions": {"websocket.http.response": {}}},
        )
        async with sock as refused:
            with pytest.raises(WebsocketResponseError) as error:
                await refused.receive()
        assert error.value.response.status_code == 403
        assert await error.value.response.get_data() == REFUSED_BODY
    assert reached == []


# -- what a real client sees -----------------------------------------------------------------------


def apps() -> dict[str, tuple[Any, list[str]]]:
    """Each adapter's test app and its login-required WebSocket paths (endpoints and views)."""
    return {
        "fastapi": (fastapi_app()[0], ["/ws", "/view"]),
        "starlette": (starlette_app("install")[0], ["/ws"]),
        "quart": (quart_app(), ["/ws", "/view"]),
    }


@pytest.mark.parametrize("framework", ["fastapi", "starlette", "quart"])
async def test_anonymous_handshake_gets_the_same_403_everywhere_under_uvicorn(
    framework: str,
) -> None:
    app, paths = apps()[framework]
    async with serve(app) as address:
        for path in paths:
            with pytest.raises(InvalidStatus) as refused:
                async with ws(address, path):
                    pass
            response = refused.value.response
            assert (response.status_code, bytes(response.body or b"")) == (403, REFUSED_BODY)
