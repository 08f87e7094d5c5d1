"""Real uvicorn servers for end-to-end tests: in this event loop, or in a child process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import uvicorn

from asgi_groups import Registry


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 15.0, proc: subprocess.Popen[Any] | None = None
) -> None:
    """Block until something accepts TCP connections on ``port`` (or fail loudly)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


@contextlib.asynccontextmanager
async def serve(app: Any, **config: Any) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn in this event loop; yields ``host:port``."""
    port = free_port()
    options: dict[str, Any] = {"log_level": "warning", "lifespan": "auto", "ws": "auto"}
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before starting")
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


def stop_process(proc: subprocess.Popen[str] | None, timeout: float = 15.0) -> None:
    """SIGTERM ``proc`` and wait for it to exit (SIGKILL after ``timeout``); None: nothing."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


@contextlib.contextmanager
def serve_process(
    target: str,
    *,
    env: Mapping[str, str] | None = None,
    server: str = "uvicorn",
    factory: bool = False,
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run ``module:attr`` under uvicorn (or hypercorn) in a child; yields (address, proc)."""
    port = free_port()
    if server == "uvicorn":
        cmd = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--log-level", "warning"]
        if factory:
            cmd.append("--factory")
    else:
        cmd = [sys.executable, "-m", "hypercorn", target, "--bind", f"127.0.0.1:{port}"]
    child_env = dict(os.environ)
    child_env.update(env or {})
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, child_env.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.Popen(
        cmd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for_port(port, proc=proc)
        yield f"127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def run_lifespan(registry: Registry, receive: Any, send: Any) -> None:
    """Serve a lifespan scope: start ``registry`` at startup, close it at shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await registry.start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await registry.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
