"""A real Prometheus scrapes a running chat during traffic and its HTTP API has the numbers the
test produced; with two uvicorn workers in multiprocess mode, any worker's /metrics adds up."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from .support.chat import Site, Tab, chat_process
from .support.servers import free_port, stop_process, wait_for_port
from .test_metrics import promtool_check, value

SECRET = "metrics-prometheus-secret"
#: Seeded chat users (password: the name capitalised).
USERS = ("greg", "chuck", "amanda", "lisa")
#: How long a test waits for Prometheus or the mirrors to catch up.
PATIENCE = 20.0


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not found: apt-get install prometheus")
    return binary


class Prometheus:
    """A prometheus server on a free port scraping ``target`` every second, own storage."""

    def __init__(self, binary: str, target: str, workdir: Path) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: chat\n    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        cmd = [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}"]
        cmd += [f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        log = open(workdir / "prometheus.log", "w")  # noqa: SIM115 - the child owns it
        try:
            self.proc: subprocess.Popen[str] | None = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, text=True
            )
        finally:
            log.close()
        wait_for_port(self.port, proc=self.proc)

    async def query(self, expr: str) -> float | None:
        async with httpx.AsyncClient() as client:
            reply = await client.get(
                f"http://127.0.0.1:{self.port}/api/v1/query", params={"query": expr}
            )
        result = reply.json()["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    async def until(self, expr: str, expected: float) -> None:
        deadline = time.monotonic() + PATIENCE
        got = None
        while time.monotonic() < deadline:
            got = await self.query(expr)
            if got == expected:
                return
            await asyncio.sleep(0.25)
        raise AssertionError(f"{expr} is {got}, not {expected}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)


async def scrape(base: str) -> str:
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"{base}/metrics")
    assert reply.status_code == 200
    return reply.text


async def settled(base: str, name: str) -> float:
    """The value of ``name`` once two scrapes a mirror interval apart agree."""
    previous = None
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        now = value(await scrape(base), name)
        if now == previous:
            return now
        previous = now
        await asyncio.sleep(1.2)
    raise AssertionError(f"{name} never settled")


async def broadcast_to_all(tabs: list[Tab], count: int) -> None:
    """``count`` broadcasts from the first tab, each received by every tab."""
    for i in range(count):
        await tabs[0].send({"type": "BroadCast", "text": f"m{i}"})
        for tab in tabs:
            got = await tab.next({"broadcast"})
            assert got["text"] == f"m{i}"


@pytest.fixture
def chat_env(tmp_path: Path) -> dict[str, str]:
    return {
        "CHAT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
        "CHAT_SECRET_KEY": SECRET,
        "PROMETHEUS_MULTIPROC_DIR": "",
    }


async def test_prometheus_scrapes_the_chat_during_traffic(
    tmp_path: Path, chat_env: dict[str, str]
) -> None:
    binary = prometheus_binary()
    with chat_process("examples.chat.starlette_app:app", chat_env) as server:
        prometheus = Prometheus(binary, server.address, tmp_path)
        try:
            site = Site(server.address)
            tabs = [await site.tab(name) for name in USERS[:3]]
            await Tab.all_quiet(tabs)
            before = value(await scrape(server.base), "asgi_groups_deliveries_total")
            await broadcast_to_all(tabs, 5)
            body = await scrape(server.base)
            promtool_check(body)
            assert value(body, "asgi_groups_connections") == 3
            assert value(body, "asgi_groups_deliveries_total") == before + 15
            await prometheus.until("asgi_groups_connections", 3)
            await prometheus.until("asgi_groups_deliveries_total", before + 15)
            await prometheus.until('asgi_groups_messages_published_total{kind="broadcast"}', 5)
            for tab in tabs:
                await tab.close()
            await prometheus.until("asgi_groups_connections", 0)
        finally:
            prometheus.stop()


# -- multiprocess ------------------------------------------------------------------------------


def per_process(directory: Path, metric: str) -> dict[int, float]:
    """``{pid: value}`` of a livesum gauge, read from each worker's own file."""
    found: dict[int, float] = {}
    for path in glob.glob(str(directory / "gauge_livesum_*.db")):
        pid = int(Path(path).stem.rsplit("_", 1)[1])
        for key, amount, _, _ in MmapedDict.read_all_values_from_file(path):
            if json.loads(key)[1] == metric:
                found[pid] = amount
    return found


@pytest.fixture
def workers(tmp_path: Path, redis_url: str, chat_env: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """The Starlette chat under uvicorn with two workers on Redis, in multiprocess mode."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    env = dict(os.environ)
    env.update(chat_env)
    env.update(CHAT_REDIS_URL=redis_url, PROMETHEUS_MULTIPROC_DIR=str(directory))
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "examples.chat.starlette_app:app", "--workers", "2"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    log_path = tmp_path / "uvicorn.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, proc=proc)
        yield f"127.0.0.1:{port}", directory
    finally:
        stop_process(proc)
        print(f"uvicorn's log:\n{log_path.read_text()}")  # shown when the test failed


async def test_two_workers_in_multiprocess_mode_add_up(workers: tuple[str, Path]) -> None:
    address, directory = workers
    base = f"http://{address}"
    site = Site(address)
    tabs: list[Tab] = []
    # open tabs until both workers hold some (the kernel picks the worker of each)
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        tabs.append(await site.tab(USERS[len(tabs) % len(USERS)]))
        await asyncio.sleep(1.1)  # a mirror interval
        counts = per_process(directory, "asgi_groups_connections")
        if len(tabs) >= 2 and len([n for n in counts.values() if n > 0]) == 2:
            break
    else:
        pytest.fail(f"the connections never spread over both workers: {counts}")
    assert sum(counts.values()) == len(tabs)
    await Tab.all_quiet(tabs)
    before = await settled(base, "asgi_groups_deliveries_total")
    await broadcast_to_all(tabs, 3)
    expected = before + 3 * len(tabs)
    deadline = time.monotonic() + PATIENCE
    body: Any = None
    while time.monotonic() < deadline:
        body = await scrape(base)
        if value(body, "asgi_groups_deliveries_total") == expected:
            break
        await asyncio.sleep(0.3)
    assert value(body, "asgi_groups_deliveries_total") == expected
    assert value(body, "asgi_groups_connections") == len(tabs)
    assert value(body, "asgi_groups_messages_published_total", kind="broadcast") >= 3
    promtool_check(body)
    for tab in tabs:
        await tab.close()
