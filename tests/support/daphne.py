"""The chat example, or any ASGI app, under a real daphne process: a server that runs no
lifespan, so that whatever an app prepares there must also happen on first use."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from .servers import free_port, stop_process, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def serve_daphne(target: str, env: Mapping[str, str], log: Path) -> Iterator[str]:
    """Run ``module:attr`` under ``python -m daphne``; yields ``host:port``. Its output goes to
    ``log`` (shown when it fails to start)."""
    port = free_port()
    child_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), target]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=child_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(port, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{log.read_text()}") from exc
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)
