"""The uvicorn settings of ``asgi_groups.servers``: permessage-deflate, which browsers offer, is
off unless asked for (its per-socket compressor state costs tens of KB of server memory)."""

from __future__ import annotations

import pytest
from websockets.asyncio.client import connect

from asgi_groups.servers import uvicorn_options
from asgi_groups.types import Receive, Scope, Send

from .support.servers import serve


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message["text"]})


@pytest.mark.parametrize("ws", ["websockets-sansio", "wsproto"])
@pytest.mark.parametrize("compression", [False, True])
async def test_compression_is_negotiated_only_when_asked_for(ws: str, compression: bool) -> None:
    options = uvicorn_options(compression=compression)
    async with serve(echo, ws=ws, **options) as address:
        client = await connect(f"ws://{address}/", compression="deflate")  # as browsers offer
        try:
            await client.send("x" * 1000)
            assert await client.recv() == "x" * 1000
            negotiated = [ext.name for ext in client.protocol.extensions]
        finally:
            await client.close()
    assert negotiated == (["permessage-deflate"] if compression else [])
