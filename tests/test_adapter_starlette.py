"""The Starlette adapter: routes, mounts, plain endpoints, lifespan; TestClient and real uvicorn."""

from __future__ import annotations

import json

import httpx
import pytest
from asgiref.testing import ApplicationCommunicator
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from asgi_groups import QueueLimits, Registry
from asgi_groups.sessions import StarletteSessionCookie
from asgi_groups.testing import WebSocketTestClient

from .adapter_apps.common import SECRET, client_cookie, http_cookie, recv_json, silent, tamper, ws
from .adapter_apps.starlette_app import ENDED, make_app
from .support.servers import serve
from .support.waiting import wait_until

ORIGIN = {"origin": "http://testserver"}
WIRINGS = ["middleware", "install"]
PATHS = ["/ws", "/mounted/ws", "/hub/", "/plain"]


def expected_groups(path: str, *own: str) -> list[str]:
    return sorted({*own, "lobby"} if path == "/plain" else set(own))


@pytest.mark.parametrize("wiring", WIRINGS)
@pytest.mark.parametrize("path", PATHS)
def test_session_cookie_user_joins_groups_and_gets_group_messages(wiring: str, path: str) -> None:
    app, registry, _ = make_app(wiring)
    with TestClient(app) as client:
        greg, chuck, amanda = (client_cookie(client, n) for n in (1, 2, 3))
        connect = client.websocket_connect
        with (
            connect(path, headers={**ORIGIN, "cookie": greg}) as g,
            connect(path, headers={**ORIGIN, "cookie": chuck}) as c,
            connect(path, headers={**ORIGIN, "cookie": amanda}) as a,
        ):
            assert g.receive_json() == {"hello": "greg", "groups": expected_groups(path, "boys")}
            assert c.receive_json() == {"hello": "chuck", "groups": expected_groups(path, "boys")}
            assert a.receive_json() == {
                "hello": "amanda",
                "groups": expected_groups(path, "girls"),
            }
            a.send_text(json.dumps({"group": "boys", "text": "hi boys"}))
            assert g.receive_json() == {"from": "amanda", "text": "hi boys"}
            assert c.receive_json() == {"from": "amanda", "text": "hi boys"}
            client.portal.call(registry.send_group, "girls", "from outside")  # type: ignore[union-attr]
            assert a.receive_text() == "from outside"
            assert registry.stats().connections == 3
    assert registry.stats().connections == 0
    assert not registry.started


@pytest.mark.parametrize("wiring", WIRINGS)
def test_tampered_or_missing_cookie_is_anonymous_and_refused_403(wiring: str) -> None:
    app, _, _ = make_app(wiring)
    with TestClient(app) as client:
        greg = client_cookie(client, 1)
        for headers in ({**ORIGIN, "cookie": tamper(greg)}, ORIGIN):
            with pytest.raises(WebSocketDenialResponse) as refused:
                client.websocket_connect("/ws", headers=headers).__enter__()
            assert refused.value.status_code == 403
        # the same cookie, untouched, is accepted
        with client.websocket_connect("/ws", headers={**ORIGIN, "cookie": greg}) as g:
            assert g.receive_json()["hello"] == "greg"


def test_foreign_origin_refused_403() -> None:
    app, _, _ = make_app("install")
    with TestClient(app) as client:
        greg = client_cookie(client, 1)
        headers = {"origin": "http://evil.example", "cookie": greg}
        with pytest.raises(WebSocketDenialResponse) as refused:
            client.websocket_connect("/ws", headers=headers).__enter__()
        assert refused.value.status_code == 403


@pytest.mark.parametrize("wiring", WIRINGS)
def test_lifespan_composes_with_the_apps_own(wiring: str) -> None:
    app, registry, events = make_app(wiring)
    with TestClient(app) as client:
        assert events.log == ["startup (registry up)"]
        assert registry.started
        assert client.get("/state").json() == {"from_own_lifespan": True}
    assert events.log == ["startup (registry up)", "shutdown (registry up)"]
    assert not registry.started


def test_logout_closes_the_users_sockets_4401() -> None:
    app, registry, _ = make_app("install")
    with TestClient(app) as client:
        greg, chuck = client_cookie(client, 1), client_cookie(client, 2)
        connect = client.websocket_connect
        with (
            connect("/ws", headers={**ORIGIN, "cookie": greg}) as g1,
            connect("/plain", headers={**ORIGIN, "cookie": greg}) as g2,
            connect("/ws", headers={**ORIGIN, "cookie": chuck}) as c,
        ):
            for sock in (g1, g2, c):
                sock.receive_json()
            client.post("/logout", headers={"cookie": greg})
            for sock in (g1, g2):
                with pytest.raises(WebSocketDisconnect) as closed:
                    sock.receive_json()
                assert closed.value.code == 4401
            c.send_text(json.dumps({"group": "boys", "text": "still here"}))
            assert c.receive_json() == {"from": "chuck", "text": "still here"}
            assert [conn.user_id for conn in registry.connections()] == ["2"]


# -- real uvicorn, real clients ------------------------------------------------------------------


@pytest.mark.parametrize("wiring", WIRINGS)
async def test_uvicorn_session_cookie_groups_and_lifespan(wiring: str) -> None:
    app, registry, events = make_app(wiring)
    async with serve(app) as address:
        assert events.log == ["startup (registry up)"]
        greg, chuck = await http_cookie(address, 1), await http_cookie(address, 2)
        amanda = await http_cookie(address, 3)
        async with (
            ws(address, "/ws", greg) as g,
            ws(address, "/mounted/ws", chuck) as c,
            ws(address, "/plain", amanda) as a,
        ):
            assert (await recv_json(g))["hello"] == "greg"
            assert (await recv_json(c))["hello"] == "chuck"
            assert await recv_json(a) == {"hello": "amanda", "groups": ["girls", "lobby"]}
            await a.send(json.dumps({"group": "boys", "text": "hi boys"}))
            for sock in (g, c):
                assert await recv_json(sock) == {"from": "amanda", "text": "hi boys"}
            await g.send(json.dumps({"group": "lobby", "text": "anyone?"}))
            assert await recv_json(a) == {"from": "greg", "text": "anyone?"}
            assert await silent(c)
        await wait_until(lambda: registry.stats().connections == 0)

        with pytest.raises(InvalidStatus) as refused:
            async with ws(address, "/hub/", tamper(greg)):
                pass
        assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as refused:
            async with ws(address, "/ws", greg, origin="http://evil.example"):
                pass
        assert refused.value.response.status_code == 403
    assert events.log == ["startup (registry up)", "shutdown (registry up)"]
    assert not registry.started


async def test_uvicorn_logout_closes_4401() -> None:
    app, _, _ = make_app("middleware")
    async with serve(app) as address:
        greg = await http_cookie(address, 1)
        async with ws(address, "/plain", greg) as g:
            await recv_json(g)
            async with httpx.AsyncClient(base_url=f"http://{address}") as http:
                await http.post("/logout", headers={"cookie": greg})
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(g)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_plain_endpoint_torn_down_when_the_client_never_acknowledges_close() -> None:
    """The close frame went out but the client never answers: after ``close_timeout`` the
    handler task is cancelled by the library, ``joined`` ends quietly and the app returns."""
    registry = Registry(limits=QueueLimits(close_timeout=0.2))
    app, _, _ = make_app("install", registry)
    ENDED.clear()
    cookie = StarletteSessionCookie(SECRET).encode({"user_id": 1})
    scope = WebSocketTestClient(app, "/plain", cookies={"session": cookie}).scope
    app_under_test = ApplicationCommunicator(app, scope)
    await app_under_test.send_input({"type": "websocket.connect"})
    assert (await app_under_test.receive_output(2))["type"] == "websocket.accept"
    assert json.loads((await app_under_test.receive_output(2))["text"])["hello"] == "greg"
    await registry.disconnect_user(1)
    assert (await app_under_test.receive_output(2))["code"] == 4401
    await app_under_test.wait(3)  # finishes, though no disconnect came
    assert ENDED == ["greg"]  # the block ended quietly: the code after it ran
    assert registry.stats().connections == 0
    await registry.close()
