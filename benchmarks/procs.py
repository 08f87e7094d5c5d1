"""Child processes of a benchmark run: started with a death signal, always killed on exit.

Every child gets ``PR_SET_PDEATHSIG`` (SIGKILL when the harness dies, even by SIGKILL), is
tracked in :data:`CHILDREN`, and is terminated then killed by :func:`kill` — from ``finally``
blocks, on Ctrl-C and from an ``atexit`` hook.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHILDREN: set[subprocess.Popen[bytes]] = set()
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(cmd: Sequence[str], log: Path, *, pipes: bool = False) -> subprocess.Popen[bytes]:
    """Start ``cmd`` from the repository root, output appended to ``log``.

    ``pipes``: stdin and stdout are pipes (the load generator's command channel).
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(cmd),
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else out,
            stderr=out,
            preexec_fn=_die_with_parent,
        )
    CHILDREN.add(proc)
    return proc


def kill(proc: subprocess.Popen[Any], grace: float = 2.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; always reaps."""
    CHILDREN.discard(proc)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()


def kill_all() -> None:
    for proc in list(CHILDREN):
        kill(proc, grace=0.5)


atexit.register(kill_all)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """Until something accepts on ``port``; fails early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout:.0f}s")


@contextlib.asynccontextmanager
async def redis_server(log: Path, binary: str = "redis-server") -> AsyncIterator[tuple[str, int]]:
    """A throw-away redis-server on a free port, no persistence; yields ``(url, pid)``."""
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--maxclients", "10000", "--loglevel", "warning", "--protected-mode", "no"]
    proc = spawn(cmd, log)
    try:
        await wait_for_port(port, proc, timeout=10)
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        kill(proc)


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
