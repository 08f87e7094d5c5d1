"""Fault acceptance: real uvicorn processes on a real redis-server, tagged traffic, then faults.

Each fault run (``tests/support/faults.py``) starts two server processes of
``tests.redis_apps.fault_chat_app`` on one redis-server, connects recording clients to both,
sends tagged chat messages at 50 msg/s in total, applies the fault and measures, per intended
recipient and per tag, what was delivered, lost (and who was told) or duplicated, every close
code and non-chat frame, when delivery resumed and when the processes noticed. The report is
printed (``-s`` shows it) and written to the test's ``tmp_path``; the test fails with it when an
acceptance criterion is missed:

- no client is closed with 4408 or 4429;
- no silent loss: each message reaches each intended recipient, or its sender is told (an error
  frame answering it, or its socket closed before the answer), or the recipient is told (a
  close with 1012 / 1013, a welcome that did not recover, a frame about missed messages);
- a message answered "not delivered" (``"delivered": false``, or the wording) reached nobody:
  a timeout must say "unknown";
- a deaf process' clients are told, or have everything recovered, within ``deaf_bound``;
- delivery resumes on every path (process to process) within 1 s of the fault's end.

The short kill and partition, the large publishes and the logout with Redis down run in the
default suite; the rest is opt-in (``pytest -m soak tests/test_faults.py``): the ``long``
faults (5 s kill, 10 s stop, 15 s partition), the short stop and the logout during a
partition. A partition runs one server process in a network namespace
(``tests/support/netns.py``: root and iproute2 only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .support.chat import Site
from .support.faults import (
    FaultRedis,
    FaultReport,
    Scenario,
    bulk_names,
    clients_on,
    poll_until,
    run_fault,
    servers_on,
)
from .support.netns import namespace, unavailable_reason
from .support.servers import free_port
from .support.waiting import wait_until

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs apt-get install redis-server"
)

SHORT: dict[str, Any] = {"clients_per_process": 2, "warmup": 1.0, "settle": 2.0}
SCENARIOS = [
    Scenario("kill-long", "kill", 5.0),
    Scenario("stop-long", "stop", 10.0),
    Scenario("partition-long", "partition", 15.0),
    Scenario("kill-short", "kill", 2.0, **SHORT),
    Scenario("stop-short", "stop", 3.0, **SHORT),
    Scenario("partition-short", "partition", 4.0, **SHORT),
]
#: In the default suite (the rest is opt-in: ``-m soak``, run before a release).
DEFAULT = {"kill-short", "partition-short"}


def needs_namespaces() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"a silent partition {reason}")


def keep(report: FaultReport, tmp_path: Path) -> str:
    text = report.text()
    print(text)
    (tmp_path / "report.txt").write_text(text)
    return text


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param(s, id=s.name, marks=() if s.name in DEFAULT else pytest.mark.soak)
        for s in SCENARIOS
    ],
)
async def test_fault(scenario: Scenario, tmp_path: Path, prefix: str) -> None:
    """One fault under traffic meets every acceptance criterion (see the module doc)."""
    if scenario.fault == "partition":
        needs_namespaces()
    report = await run_fault(scenario, tmp_path, prefix)
    text = keep(report, tmp_path)
    assert not report.failures(), text


def new_redis(tmp_path: Path, extra_bind: list[str] | None = None) -> FaultRedis:
    binary = shutil.which("redis-server")
    assert binary is not None
    redis = FaultRedis(binary, free_port(), tmp_path, extra_bind or [])
    redis.start()
    return redis


#: What a log line naming the cause of a dropped subscription says.
BUFFER_CAUSE = re.compile(r"output.buffer|buffer.limit|client-output-buffer", re.IGNORECASE)


@pytest.mark.timeout(120)
async def test_large_publishes_over_a_small_pubsub_buffer(tmp_path: Path, prefix: str) -> None:
    """Ten 100 KB publishes under ``client-output-buffer-limit pubsub 64kb 32kb 5``: each
    arrives or its publisher gets a clear error; no subscriber is dropped without a log line
    naming the cause."""
    redis = new_redis(tmp_path)
    try:
        with servers_on(redis, tmp_path, prefix) as servers:
            async with clients_on(servers, 1) as clients:
                with redis.client() as raw:
                    raw.config_set("client-output-buffer-limit", "pubsub 64kb 32kb 5")
                async with httpx.AsyncClient(timeout=120) as http:
                    response = await http.post(
                        f"http://{servers[0].address}/send",
                        params={"group": "room", "n": 10, "size": 100_000},
                    )
                outcomes: list[str] = response.json()["outcomes"]
                tags = {f"bulk{i}" for i, o in enumerate(outcomes) if o == "ok"}
                refused = {f"bulk{i}" for i, o in enumerate(outcomes) if "not sent" in o}

                def arrived() -> bool:
                    return all(tags <= {d.tag for d in c.deliveries} for c in clients)

                await poll_until(arrived, 15)
                states = {s.label: await s.state() for s in servers}
            logs = {s.label: s.log() for s in servers}
        dropped = bulk_names(redis.log_text())
    finally:
        redis.stop()
    lines = [f"publisher outcomes: {outcomes}"]
    missing = {}
    contradicted = set()
    for c in clients:
        seen = {d.tag for d in c.deliveries}
        missing[c.name] = sorted(tags - seen)
        contradicted |= refused & seen
        codes = [e.detail["code"] for e in c.events if e.kind == "close"]
        others = [e.detail.get("type") for e in c.events if e.kind == "frame"]
        lines.append(
            f"{c.name}: {len(seen & tags)}/{len(tags)} arrived, missing {missing[c.name]}, "
            f"arrived though 'not sent' {sorted(refused & seen)}, "
            f"closes {codes}, other frames {others}"
        )
    unexplained = {}
    for label, state in states.items():
        process_id = str(state.get("stats", {}).get("process_id", "?"))
        drops = sum(process_id in name for name in dropped)
        named = [line for line in logs[label].splitlines() if BUFFER_CAUSE.search(line)]
        lines.append(
            f"process {label}: dropped by Redis {drops}x, reconnects "
            f"{state.get('stats', {}).get('reconnects')}, log lines naming the cause: "
            f"{named[:3]}"
        )
        if drops and not named:
            unexplained[label] = drops
    report = "\n".join(lines)
    print(report)
    bad = [o for o in outcomes if o != "ok" and len(o) < 10]
    assert not bad, f"unclear publisher errors {bad}\n{report}"
    assert not any(missing.values()), f"published 'ok' but not delivered\n{report}"
    assert not contradicted, f"said 'not sent' but delivered: {sorted(contradicted)}\n{report}"
    assert not unexplained, f"subscribers dropped with no log line naming why\n{report}"


@dataclass
class Watch:
    """One open chat tab whose close (code and time) is recorded."""

    name: str
    closed_at: float | None = None
    code: int | None = None
    frames: list[Any] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def run(self, address: str, cookie: str) -> None:
        async with connect(
            f"ws://{address}/ws",
            origin=f"http://{address}",  # type: ignore[arg-type]
            additional_headers={"Cookie": cookie},
            max_queue=None,
        ) as ws:
            await ws.send(json.dumps({"type": "ag.hello"}))
            try:
                async for data in ws:
                    self.frames.append(str(data)[:100])
            except ConnectionClosed as exc:
                self.code = exc.rcvd.code if exc.rcvd else 1006
                self.closed_at = time.time()
                return
            self.code = ws.close_code
            self.closed_at = time.time()


async def open_tab(name: str, address: str, cookie: str) -> Watch:
    watch = Watch(name)
    watch.task = asyncio.create_task(watch.run(address, cookie))
    await wait_until(lambda: len(watch.frames) >= 2 or watch.task.done(), timeout=10)  # type: ignore[union-attr]
    return watch


CHAT_APP = "examples.chat.starlette_app:app"


async def refused(address: str) -> bool:
    """A tab of the logged-out browser reconnecting (its cookie was cleared) is refused."""
    try:
        async with connect(f"ws://{address}/ws", origin=f"http://{address}"):  # type: ignore[arg-type]
            return False
    except InvalidStatus as exc:
        return exc.response.status_code == 403


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "outage", ["redis-down", pytest.param("partition", marks=pytest.mark.soak)]
)
async def test_logout_during_an_outage(outage: str, tmp_path: Path, prefix: str) -> None:
    """Logout with Redis down (or the other process cut off from it): HTTP success, cookie
    cleared, local sockets closed 4401 at once, remote ones as soon as Redis is back or the
    partition heals (4401, or 1013 when Redis came back without the history to recover them,
    whereupon the browser cannot resume: its cookie is gone); none stays open."""
    if outage == "partition":
        needs_namespaces()
    env = {
        "CHAT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'chat.sqlite3'}",
        "CHAT_SECRET_KEY": "fault-suite-secret",
    }
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(namespace()) if outage == "partition" else None
        redis = new_redis(tmp_path, [ns.redis_host] if ns else [])
        stack.callback(redis.stop)
        a, b = stack.enter_context(
            servers_on(redis, tmp_path, prefix, target=CHAT_APP, ns=ns, env=env)
        )
        site = Site(a.address)
        cookie = await site.cookie("anny")
        tabs = [
            await open_tab("anny@A", a.address, cookie),
            await open_tab("anny@B", b.address, cookie),
        ]
        bystander = await open_tab("lisa@B", b.address, await site.cookie("lisa"))
        if ns is None:
            redis.kill()
        else:
            ns.partition()
        t_out = time.time()
        async with httpx.AsyncClient(base_url=site.base, timeout=30) as http:
            response = await http.post("/logout", headers={"Cookie": cookie})
        answered = time.time() - t_out
        await asyncio.sleep(3)  # the outage goes on a while after the logout
        if ns is None:
            await asyncio.to_thread(redis.start)
        else:
            ns.heal()
        t_back = time.time()
        await poll_until(lambda: all(t.closed_at is not None for t in tabs), 15)
        bystander_open = bystander.closed_at is None
        refused_without_cookie = await refused(b.address)
        for t in [*tabs, bystander]:
            assert t.task is not None
            t.task.cancel()
            await asyncio.gather(t.task, return_exceptions=True)
    cleared = [h for h in response.headers.get_list("set-cookie") if h.startswith("session=")]
    local, remote = tabs

    def when(tab: Watch, since: float) -> str:
        return "never" if tab.closed_at is None else f"{tab.closed_at - since:+.2f}s"

    report = (
        f"logout ({outage}): HTTP {response.status_code} in {answered:.2f}s, cookie cleared "
        f"{bool(cleared)}; local tab closed {local.code} at {when(local, t_out)} after the "
        f"logout; remote tab closed {remote.code} at {when(remote, t_back)} after Redis was "
        f"back; bystander still open {bystander_open}"
    )
    print(report)
    assert response.status_code < 400, report
    assert cleared and all("01 jan 1970" in h.lower() for h in cleared), report
    assert local.code == 4401 and local.closed_at is not None, report
    assert local.closed_at - t_out < 1.0, report
    assert remote.code in (4401, 1013) and remote.closed_at is not None, report
    assert remote.closed_at - t_back < 2.0, report
    if remote.code == 1013:
        # Redis came back empty, so the tab was told to resume before the logout reached
        # its process; resuming, the browser has no cookie left: it stays out
        assert refused_without_cookie, report
