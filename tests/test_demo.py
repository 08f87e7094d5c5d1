"""The README's demo command serves the chat example and prints the logins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .support.servers import free_port, wait_for_port


@pytest.mark.parametrize("framework", ["fastapi", "starlette", "quart"])
def test_demo_serves_the_chat_and_prints_logins(tmp_path: Path, framework: str) -> None:
    port = free_port()
    env = dict(os.environ, CHAT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'chat.sqlite3'}")
    cmd = [sys.executable, "-m", "asgi_groups.cli", "demo", "--framework", framework]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)],
        cwd=tmp_path,  # any directory: the demo finds the example itself
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port, timeout=30, proc=proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            assert http.get("/").status_code in (302, 303, 307)
            login = http.post("/login", json={"username": "amanda", "password": "Amanda"})
            assert login.json() == {"success": "Welcome back, amanda"}
            assert "chat" in http.get("/").text.lower()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert f"http://127.0.0.1:{port}/" in out
    assert "greg" in out and "Greg" in out and "girls" in out
