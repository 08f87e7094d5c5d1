"""Recovery across server processes: restarts, deploys (1012) and Redis, in uvicorn children."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from .support.protocol import Tally, hello, open_raw
from .support.servers import serve_process

APP = "tests.redis_apps.recoverable_app:app"
GROUP = "g:lobby"


@contextmanager
def server(**env: str) -> Iterator[str]:
    with serve_process(APP, env=env) as (address, _):
        yield address


async def send(address: str, group: str, count: int, first: int = 0) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"http://{address}/send", params={"group": group, "n": count, "first": first}
        )
        response.raise_for_status()


async def test_memory_server_restart_is_a_new_epoch_and_is_said() -> None:
    """The memory backend keeps history in the process: after a restart the client is told."""
    tally = Tally()
    with server() as address:
        async with open_raw(address, 1) as ws:
            tally.take_welcome(await hello(ws))
            await send(address, "lobby", 3)
            await tally.read(ws, 3)
    with server() as address:
        async with open_raw(address, 1) as ws:
            welcome: dict[str, Any] = await hello(ws, tally.positions)
            await send(address, "lobby", 1, first=3)
            frame = json.loads(await ws.recv())
    assert welcome["recovered"] is False
    reasons = {status["reason"] for status in welcome["channels"].values()}
    assert reasons == {"epoch changed"}
    assert frame["data"] == {"n": 3} and frame["offset"] == 1  # a new history starts at 1
