"""One server under test with its load generator (and redis-server when needed).

A :class:`Session` starts the processes, forwards commands to the load generator over its
stdin/stdout, and reads the server's memory. Leaving the ``async with`` kills every process
it started, whatever happened inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from .plan import Plan
from .procs import free_port, kill, python, redis_server, spawn, wait_for_port
from .procstat import cpu_ns, rss_bytes
from .systems import System

HOST = "127.0.0.1"


class CommandFailed(RuntimeError):
    """The load generator answered a command with an error, or not at all."""


class Session:
    """``async with Session(system, plan, workdir, tag) as s: await s.call("connect", n=…)``."""

    def __init__(
        self, system: System, plan: Plan, workdir: Path, tag: str, *, ws: str, redis_bin: str
    ) -> None:
        self.system = system
        self.plan = plan
        self.tag = tag
        self.ws = ws
        self.redis_bin = redis_bin
        self.logs = {k: workdir / f"{system.name}-{tag}-{k}.log" for k in ("server", "client")}
        self.logs["redis"] = workdir / f"{system.name}-{tag}-redis.log"
        self.redis_url: str | None = None
        self.redis_pid: int | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.client: subprocess.Popen[bytes] | None = None
        self._replies: asyncio.StreamReader | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Session:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None and self.client.poll() is None and self.client.stdin:
            with contextlib.suppress(Exception):
                self.client.stdin.write(b'{"op": "quit"}\n')
                self.client.stdin.flush()
        await self._stack.aclose()

    async def _start(self) -> None:
        if self.system.redis:
            url, pid = await self._stack.enter_async_context(
                redis_server(self.logs["redis"], self.redis_bin)
            )
            self.redis_url, self.redis_pid = url, pid
        port = free_port()
        args = [self.system.server, "--port", str(port), "--ws", self.ws]
        if self.redis_url:
            args += ["--redis", self.redis_url]
        self.server = spawn(python("benchmarks.serve", *args), self.logs["server"])
        self._stack.callback(kill, self.server)
        try:
            await wait_for_port(port, self.server)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}: {self.tail('server')}") from None
        self.client = spawn(python("benchmarks.loadgen"), self.logs["client"], pipes=True)
        self._stack.callback(kill, self.client)
        assert self.client.stdout is not None
        loop = asyncio.get_running_loop()
        self._replies = asyncio.StreamReader(limit=1 << 20)
        protocol = asyncio.StreamReaderProtocol(self._replies)
        transport, _ = await loop.connect_read_pipe(lambda: protocol, self.client.stdout)
        self._stack.callback(transport.close)
        pids = {"server": self.server.pid}
        if self.redis_pid is not None:
            pids["redis"] = self.redis_pid
        await self.call(
            "setup",
            10,
            host=HOST,
            port=port,
            path=self.system.path,
            dialect=self.system.dialect,
            split=self.system.split,
            pids=pids,
        )

    async def call(self, op: str, timeout: float, **args: Any) -> dict[str, Any]:
        """Run one load-generator command; raises :class:`CommandFailed` on error or timeout."""
        assert self.client is not None and self.client.stdin is not None
        assert self._replies is not None
        self.check_server()
        self.client.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        self.client.stdin.flush()
        try:
            line = await asyncio.wait_for(self._replies.readline(), timeout)
        except TimeoutError:
            msg = f"{op}: no answer from the load generator in {timeout:.0f}s"
            raise CommandFailed(msg) from None
        if not line:
            raise CommandFailed(f"{op}: the load generator exited ({self.tail('client')})")
        reply = json.loads(line)
        if "error" in reply:
            raise CommandFailed(f"{op}: {reply['error']}{self._server_note()}")
        result: dict[str, Any] = reply["ok"]
        return result

    def check_server(self) -> None:
        if self.server is not None and self.server.poll() is not None:
            raise CommandFailed(
                f"the server exited with code {self.server.returncode}: {self.tail('server')}"
            )

    def _server_note(self) -> str:
        if self.server is not None and self.server.poll() is not None:
            return f" (server exited: {self.tail('server')})"
        return ""

    def tail(self, kind: str, lines: int = 6) -> str:
        try:
            text = self.logs[kind].read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(text[-lines:]) or "empty log"

    def rss(self) -> int:
        assert self.server is not None
        return rss_bytes(self.server.pid)

    async def settle(self, limit: float = 5.0, busy: float = 0.1, window: float = 0.2) -> bool:
        """Until the server uses under ``busy`` of a CPU over ``window``; False if it never does."""
        assert self.server is not None
        give_up = time.monotonic() + limit
        while time.monotonic() < give_up:
            before = cpu_ns(self.server.pid)
            await asyncio.sleep(window)
            if (cpu_ns(self.server.pid) - before) / 1e9 / window < busy:
                return True
        return False
