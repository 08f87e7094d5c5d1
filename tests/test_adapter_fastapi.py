"""The FastAPI adapter: one-call install, views, dependencies; TestClient and real uvicorn."""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from websockets.exceptions import InvalidStatus

from .adapter_apps.common import client_cookie, http_cookie, recv_json, silent, tamper, ws
from .adapter_apps.fastapi_app import make_app
from .support.servers import serve
from .support.waiting import wait_until

ORIGIN = {"origin": "http://testserver"}


@pytest.mark.parametrize("path", ["/ws", "/view"])
def test_session_cookie_user_joins_groups_and_gets_group_messages(path: str) -> None:
    app, registry, _ = make_app()
    with TestClient(app) as client:
        greg, chuck, amanda = (client_cookie(client, n) for n in (1, 2, 3))
        connect = client.websocket_connect
        with (
            connect(path, headers={**ORIGIN, "cookie": greg}) as g,
            connect(path, headers={**ORIGIN, "cookie": chuck}) as c,
            connect(path, headers={**ORIGIN, "cookie": amanda}) as a,
        ):
            assert g.receive_json() == {"hello": "greg", "groups": ["boys"]}
            assert c.receive_json() == {"hello": "chuck", "groups": ["boys"]}
            assert a.receive_json() == {"hello": "amanda", "groups": ["girls"]}
            a.send_text(json.dumps({"group": "boys", "text": "hi boys"}))
            assert g.receive_json() == {"from": "amanda", "text": "hi boys"}
            assert c.receive_json() == {"from": "amanda", "text": "hi boys"}
            # an HTTP handler reaches the same registry through CurrentRegistry
            assert client.post("/notify/girls", content="dinner").json() == {"sent": "girls"}
            assert a.receive_json() == {"from": "server", "text": "dinner"}
            assert registry.stats().connections == 3
    assert registry.stats().connections == 0


def test_current_user_refuses_anonymous_and_tampered_403_as_a_view_does() -> None:
    app, _, _ = make_app()
    with TestClient(app) as client:
        greg = client_cookie(client, 1)
        for headers in ({**ORIGIN, "cookie": tamper(greg)}, ORIGIN):
            for path in ("/ws", "/view"):  # the CurrentUser dependency; a login_required view
                with pytest.raises(WebSocketDenialResponse) as refused:
                    client.websocket_connect(path, headers=headers).__enter__()
                assert refused.value.status_code == 403
                assert refused.value.text == "Forbidden: login required"


def test_optional_user_and_joined_connection_for_anonymous() -> None:
    app, registry, _ = make_app()
    with TestClient(app) as client, client.websocket_connect("/open", headers=ORIGIN) as anon:
        assert anon.receive_json() == {"hello": "", "groups": []}
        assert [c.user_id for c in registry.connections()] == [None]
    assert registry.stats().connections == 0


@pytest.mark.parametrize("own_lifespan", [True, False])
def test_install_composes_with_the_apps_lifespan(own_lifespan: bool) -> None:
    app, registry, events = make_app(own_lifespan)
    with TestClient(app) as client:
        assert registry.started
        assert events.log == (["startup (registry up)"] if own_lifespan else [])
        assert client.get("/state").json() == {"from_own_lifespan": own_lifespan}
    assert not registry.started
    if own_lifespan:
        assert events.log == ["startup (registry up)", "shutdown (registry up)"]


async def test_uvicorn_session_cookie_groups_lifespan_and_refusals() -> None:
    app, registry, events = make_app()
    async with serve(app) as address:
        assert events.log == ["startup (registry up)"] and registry.started
        greg, chuck = await http_cookie(address, 1), await http_cookie(address, 2)
        amanda = await http_cookie(address, 3)
        async with (
            ws(address, "/ws", greg) as g,
            ws(address, "/view", chuck) as c,
            ws(address, "/ws", amanda) as a,
        ):
            for sock, name in ((g, "greg"), (c, "chuck"), (a, "amanda")):
                assert (await recv_json(sock))["hello"] == name
            await a.send(json.dumps({"group": "boys", "text": "hi boys"}))
            for sock in (g, c):
                assert await recv_json(sock) == {"from": "amanda", "text": "hi boys"}
            assert await silent(a)
            async with httpx.AsyncClient(base_url=f"http://{address}") as http:
                await http.post("/notify/boys", content="from http")
            for sock in (g, c):
                assert await recv_json(sock) == {"from": "server", "text": "from http"}
        await wait_until(lambda: registry.stats().connections == 0)

        for path in ("/ws", "/view"):
            with pytest.raises(InvalidStatus) as refused:
                async with ws(address, path, tamper(greg)):
                    pass
            assert refused.value.response.status_code == 403
            with pytest.raises(InvalidStatus) as refused:
                async with ws(address, path, greg, origin="http://evil.example"):
                    pass
            assert refused.value.response.status_code == 403
    assert events.log == ["startup (registry up)", "shutdown (registry up)"]
    assert not registry.started
