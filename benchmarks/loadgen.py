"""The load-generator process: holds the client connections and measures what they receive.

``python -m benchmarks.loadgen`` reads one JSON command per line on stdin and answers one JSON
line on stdout. It runs in its own process (uvloop, picows), so its CPU never counts as the
server's; it reads the server's CPU time itself, right before the trigger and right after the
last frame, so the window is as tight as the measurement.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import traceback
from typing import Any

import uvloop

from . import protocol
from .limits import raise_nofile
from .procstat import cpu_ns, cpu_of
from .slowclient import SlowReader
from .tally import Tally, percentiles
from .wsclient import Pool

LATENCY_POINTS = (0.5, 0.9, 0.99, 0.999)
COMMANDS = frozenset({"setup", "connect", "idle_cpu", "burst", "steady", "slow_open", "slow_close"})


class LoadGen:
    """State of one load generator: the target, the pool, an optional slow reader."""

    def __init__(self) -> None:
        self.tally = Tally()
        self.pool: Pool | None = None
        self.slow: SlowReader | None = None
        self.pids: dict[str, int] = {}
        self.target: dict[str, Any] = {}

    # -- commands (each returns the JSON-able answer) --------------------------------------------

    async def setup(
        self, host: str, port: int, path: str, dialect: str, split: bool, pids: dict[str, int]
    ) -> dict[str, Any]:
        self.tally = Tally(split)
        self.pids = pids
        self.target = {"host": host, "port": port, "path": path, "dialect": dialect}
        origin = f"http://{host}:{port}"
        self.pool = Pool(f"ws://{host}:{port}{path}", origin, dialect, self.tally)
        return {"origin": origin}

    async def connect(self, n: int, batch: int = 100) -> dict[str, Any]:
        pool = self._pool()
        start = time.monotonic()
        retried = await pool.resize(n, batch)
        return {"open": len(pool), "seconds": time.monotonic() - start, "retried": retried}

    async def idle_cpu(self, seconds: float) -> dict[str, Any]:
        """CPU rate (ns of CPU per s) of each watched process while nothing is sent."""
        before, t0 = cpu_of(self.pids), time.monotonic()
        await asyncio.sleep(seconds)
        after, t1 = cpu_of(self.pids), time.monotonic()
        return {name: (after[name] - before[name]) / (t1 - t0) for name in self.pids}

    async def burst(self, m: int, size: int, deadline: float, idle: float) -> dict[str, Any]:
        """Trigger ``m`` publishes; wait for ``m`` frames on every open connection."""
        pool, tally = self._pool(), self.tally
        await tally.quiet()
        tally.reset(len(pool) * m)
        me = os.getpid()
        client0, cpu0 = cpu_ns(me), cpu_of(self.pids)
        t0 = time.monotonic_ns()
        pool.trigger(protocol.burst(m, size))
        complete = await tally.wait(deadline, idle)
        end = tally.last_ns if complete else time.monotonic_ns()
        cpu1, client1 = cpu_of(self.pids), cpu_ns(me)
        return {
            "m": m,
            "connections": len(pool),
            "expected": tally.expected,
            "received": tally.received,
            "frames": tally.frames,
            "complete": complete,
            "seconds": max(end - t0, 1) / 1e9,
            "cpu_ns": {name: cpu1[name] - cpu0[name] for name in cpu0},
            "client_cpu_ns": client1 - client0,
        }

    async def steady(
        self, rate: float, seconds: float, size: int, external: bool, drain: float
    ) -> dict[str, Any]:
        """Latency of ``rate`` publishes/s for ``seconds`` (by the server, or by a publisher)."""
        pool, tally = self._pool(), self.tally
        await tally.quiet()
        tally.reset(int(rate * seconds) * len(pool), latency=True)
        if not external:
            pool.trigger(protocol.steady(rate, seconds, size))
        complete = await tally.wait(seconds + drain, drain + (5.0 if external else 1.0))
        samples = tally.latencies
        assert samples is not None
        return {
            "connections": len(pool),
            "expected": tally.expected,
            "received": tally.received,
            "complete": complete,
            "latency_ms": percentiles(samples, LATENCY_POINTS),
        }

    async def slow_open(self) -> dict[str, Any]:
        t = self.target
        origin = f"http://{t['host']}:{t['port']}"
        self.slow = SlowReader(t["host"], t["port"], t["path"], origin, t["dialect"])
        await self.slow.open()
        return await self.slow.stall()

    async def slow_close(self) -> dict[str, Any]:
        if self.slow is not None:
            self.slow.close()
            self.slow = None
        return {}

    def _pool(self) -> Pool:
        if self.pool is None:
            raise RuntimeError("setup first")
        return self.pool


async def serve_commands() -> None:
    """The stdin/stdout command loop; an exception answers ``{"error": ...}`` and carries on."""
    gen = LoadGen()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        request = json.loads(line)
        op = request.pop("op")
        if op == "quit":
            break
        try:
            if op not in COMMANDS:
                raise ValueError(f"unknown command {op!r}")
            answer: dict[str, Any] = {"ok": await getattr(gen, op)(**request)}
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    if gen.pool is not None:
        gen.pool.close_all()
    await gen.slow_close()


def main() -> None:
    raise_nofile()
    uvloop.run(serve_commands())


if __name__ == "__main__":
    main()
