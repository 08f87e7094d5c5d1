"""Metrics read at scrape time: the registry's counters in the Prometheus text format, the
probes and metrics of the chat example in all three frameworks, and the refusals counted."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient, WebSocketDenialResponse

from asgi_groups import Registry, SimpleUser, codes
from asgi_groups.health import livez, readyz
from asgi_groups.metrics import metrics_app
from examples.chat import fastapi_app, quart_app, starlette_app
from examples.chat.common import ChatConfig

from .fakes import Outbox, drained
from .support.redis import MakeRegistry
from .support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
SECRET = "metrics-test-secret"
ORIGIN = {"origin": "http://testserver"}


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of an exposition."""
    found = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(body: str, name: str, **labels: str) -> float:
    return samples(body)[(name, tuple(sorted(labels.items())))]


async def get(app: Any, path: str = "/") -> tuple[int, str]:
    """Call an ASGI app with one GET; its status and body."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send)
    return sent[0]["status"], sent[1]["body"].decode()


def promtool_check(body: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: apt-get install prometheus")
    done = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_registry_counters_in_the_exposition() -> None:
    async with Registry() as registry:
        app = metrics_app(registry, include_default=False)
        out_a, out_b = Outbox(), Outbox()
        a = await registry.connect(out_a, SimpleUser(1, "a"))
        b = await registry.connect(out_b, SimpleUser(2, "b"))
        await registry.join(a, "room")
        await registry.send_group("room", "to the room")
        await registry.send_user(2, "to b")
        await registry.broadcast("to all")
        await drained(a, b)
        status, body = await get(app)
        assert status == 200
        assert value(body, "asgi_groups_connections") == 2
        assert value(body, "asgi_groups_users") == 2
        assert value(body, "asgi_groups_groups") == 1
        for kind in ("group", "user", "broadcast"):
            assert value(body, "asgi_groups_messages_published_total", kind=kind) == 1
        assert value(body, "asgi_groups_deliveries_total") == 4  # room 1, user 1, broadcast 2
        assert value(body, "asgi_groups_backend_up") == 1
        assert value(body, "asgi_groups_publish_duration_seconds_count") == 1  # 1 in 64 sampled
        # the sampled publish reached its local recipient: publish-to-delivery timed too
        assert value(body, "asgi_groups_delivery_latency_seconds_count") == 1
        a.close(4000, "bye")
        b.finish()
        await drained(a)
        status, body = await get(app)
        assert value(body, "asgi_groups_connections") == 0
        assert value(body, "asgi_groups_closes_total", code="4000") == 1
        assert value(body, "asgi_groups_closes_total", code="none") == 1
        promtool_check(body)
        # no user id or group name in any label
        for _, labels in samples(body):
            assert all(v not in ("1", "2", "room") for _, v in labels)


async def test_probes_answer_liveness_and_readiness() -> None:
    registry = Registry()
    assert await get(livez()) == (200, "ok\n")
    # no lifespan started it: the first probe does (a server without lifespan is ready)
    assert await get(readyz(registry)) == (200, "ready\n")
    assert registry.started
    await registry.close()
    assert await get(readyz(registry)) == (503, "not ready: registry not started\n")


def login(client: TestClient, name: str) -> str:
    client.cookies.clear()
    ok = client.post("/login", json={"username": name, "password": name.capitalize()})
    assert ok.status_code == 200, ok.text
    cookie = f"session={ok.cookies['session']}"
    client.cookies.clear()
    return cookie


@pytest.mark.parametrize("module", [fastapi_app, starlette_app], ids=["fastapi", "starlette"])
def test_chat_serves_probes_and_counts_refusals(
    module: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = ChatConfig(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}", secret_key=SECRET
    )
    app = module.create_app(config)
    with TestClient(app) as client, caplog.at_level(logging.INFO, logger="asgi_groups"):
        assert client.get("/livez").status_code == 200
        assert client.get("/readyz").text == "ready\n"
        cookie = login(client, "greg")
        with pytest.raises(WebSocketDenialResponse):
            client.websocket_connect(
                "/ws", headers={"origin": "http://evil", "cookie": cookie}
            ).__enter__()
        with pytest.raises(WebSocketDenialResponse):
            client.websocket_connect("/ws", headers=ORIGIN).__enter__()  # anonymous: refused
        with client.websocket_connect("/ws", headers={**ORIGIN, "cookie": cookie}) as ws:
            ws.send_text(json.dumps({"type": "ag.hello"}))
            ws.send_text("not json")
            while '"invalid_json"' not in ws.receive_text():  # frames may come joined
                pass
            metrics = client.get("/metrics")
            assert metrics.headers["content-type"].startswith("text/plain")
            body = metrics.text
            assert value(body, "asgi_groups_connections") == 1
        assert value(body, "asgi_groups_refused_handshakes_total", reason="origin") == 1
        assert value(body, "asgi_groups_refused_handshakes_total", reason="auth") == 1
        assert value(body, "asgi_groups_refused_frames_total", reason="invalid") == 1
    refusals = [r.getMessage() for r in caplog.records if "refused websocket" in r.getMessage()]
    assert len(refusals) == 2, refusals
    assert all(r.levelno == logging.INFO for r in caplog.records if "refused" in r.getMessage())
    assert not any(cookie.split("=", 1)[1] in r.getMessage() for r in caplog.records)
    assert any("origin" in line and "http://evil" in line for line in refusals)


async def test_quart_chat_serves_probes_and_metrics(tmp_path: Path) -> None:
    config = ChatConfig(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}", secret_key=SECRET
    )
    app = quart_app.create_app(config)
    async with app.test_app():
        client = app.test_client()
        assert (await client.get("/livez")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        metrics = await client.get("/metrics")
        body = await metrics.get_data(as_text=True)
        assert value(body, "asgi_groups_connections") == 0
        assert value(body, "asgi_groups_backend_up") == 1


def test_connect_and_close_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> str:
        async with Registry() as registry:
            conn = await registry.connect(Outbox(), SimpleUser(7, "seven"))
            conn.close(codes.NORMAL)
            await drained(conn)
            return conn.id

    with caplog.at_level(logging.DEBUG, logger="asgi_groups.registry"):
        conn_id = asyncio.run(run())
    lines = [r.getMessage() for r in caplog.records if conn_id in r.getMessage()]
    assert any("connected" in line and "user 7" in line for line in lines), lines
    assert any("closed (1000)" in line for line in lines), lines


async def _exposition() -> str:
    async with Registry() as registry:
        return (await get(metrics_app(registry, include_default=False)))[1]


def test_dashboard_queries_parse_and_use_exposed_metrics(tmp_path: Path) -> None:
    """Every query of docs/grafana-dashboard.json names metrics the exposition has, and parses."""
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    body = asyncio.run(_exposition())
    exposed = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\w+)$", body, re.MULTILINE):
        exposed.add(name)
        if kind == "histogram":
            exposed.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
    for expr in exprs:
        for name in re.findall(r"asgi_groups_\w+", expr):
            assert name in exposed, f"{name} (in {expr}) is not exposed"
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: apt-get install prometheus")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:q{i}", "expr": e.replace("$job", ".*")}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_delivery_latency_through_redis_is_the_round_trip(make: MakeRegistry) -> None:
    """A sampled publish is timed until it comes back from Redis to this process's recipients:
    one sample per 64 publishes, each at least a round trip, none while none come back."""
    registry = await make()
    inbox = Outbox()
    conn = await registry.connect(inbox, SimpleUser(1, "a"))
    await registry.join(conn, "room")
    for n in range(128):
        await registry.send_group("room", f"m{n}")
    await wait_until(lambda: len(inbox.events) >= 128)
    latency = registry.delivery_latency
    assert sum(latency.counts) == 2 and latency.sum > 0
    quiet = await make(listen=False)  # publishes only: nothing comes back to it
    for n in range(64):
        await quiet.send_group("room", f"q{n}")
    assert sum(quiet.delivery_latency.counts) == 0
    body = (await get(metrics_app(registry, include_default=False)))[1]
    assert value(body, "asgi_groups_delivery_latency_seconds_count") == 2
