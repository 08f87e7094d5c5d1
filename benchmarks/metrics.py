"""What metrics cost: burst CPU per delivery with the metrics app scraped, beside without.

One process, one run, rounds interleaved: a registry with ``CONNECTIONS`` sockets whose ASGI
``send`` completes at once takes bursts of ``BURST`` broadcasts. With metrics on, the
registry's ``metrics_app`` is scraped every ``SCRAPE_EVERY`` seconds meanwhile (a scrape rate
far above Prometheus' usual 15 s, to make its cost visible) and, in multiprocess mode, its
mirror runs too. The core's own counters are always on: they are what the scrape reads::

    python -m benchmarks.metrics
"""

from __future__ import annotations

import os
import tempfile

# prometheus_client picks its multiprocess value class when imported: the directory first
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="ag-metrics-"))

import asyncio
import statistics
import time
from typing import Any

from asgi_groups import Registry
from asgi_groups.metrics import metrics_app

CONNECTIONS = 1_000
BURST = 200
ROUNDS = 15
SCRAPE_EVERY = 0.05


async def ready_send(event: Any) -> None:
    """An idle socket: the send completes without waiting."""


async def scrape(app: Any) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    await app({"type": "http", "method": "GET", "path": "/metrics", "headers": []}, receive, send)


async def scraper(app: Any, stop: asyncio.Event) -> int:
    scrapes = 0
    while not stop.is_set():
        await scrape(app)
        scrapes += 1
        await asyncio.sleep(SCRAPE_EVERY)
    return scrapes


async def burst_cpu(registry: Registry, app: Any | None) -> tuple[float, int]:
    """CPU seconds per delivery of one burst, and the scrapes made meanwhile."""
    stop = asyncio.Event()
    task = asyncio.ensure_future(scraper(app, stop)) if app is not None else None
    before = registry.stats().deliveries
    start = time.process_time()
    for i in range(BURST):
        await registry.broadcast(f"message {i}")
        if i % 20 == 0:
            await asyncio.sleep(0)  # let the scraper in, as a server's loop would
    cpu = time.process_time() - start
    stop.set()
    scrapes = await task if task is not None else 0
    delivered = registry.stats().deliveries - before
    return cpu / delivered, scrapes


async def system(multiprocess: bool) -> tuple[Registry, Any]:
    registry = Registry()
    app = metrics_app(registry, multiprocess=multiprocess, include_default=False)
    await registry.start()
    for _ in range(CONNECTIONS):
        await registry.connect(ready_send)
    return registry, app


async def main() -> None:
    plain = Registry()
    await plain.start()
    for _ in range(CONNECTIONS):
        await plain.connect(ready_send)
    scraped, app = await system(multiprocess=False)
    mirrored, mirror_app = await system(multiprocess=True)
    results: dict[str, list[float]] = {"off": [], "on": [], "on, multiprocess": []}
    scrapes = {"on": 0, "on, multiprocess": 0}
    for _ in range(ROUNDS):
        results["off"].append((await burst_cpu(plain, None))[0])
        per, n = await burst_cpu(scraped, app)
        results["on"].append(per)
        scrapes["on"] += n
        per, n = await burst_cpu(mirrored, mirror_app)
        results["on, multiprocess"].append(per)
        scrapes["on, multiprocess"] += n
    off = statistics.median(results["off"])
    print(f"{CONNECTIONS} sockets, bursts of {BURST} broadcasts, {ROUNDS} rounds interleaved")
    print("| metrics | CPU per delivery (µs, median) | vs off | scrapes |")
    print("|---|---|---|---|")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"| {name} | {median * 1e6:.3f} | {median / off:.3f}x | {scrapes.get(name, 0)} |")
    for registry in (plain, scraped, mirrored):
        await registry.close()


if __name__ == "__main__":
    asyncio.run(main())
