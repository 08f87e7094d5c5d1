"""External publisher: sends through Redis from its own process, as a worker or web process would.

``python -m benchmarks.publisher KIND --redis URL --rate R --seconds S --size B``, KIND one of
``asgi_groups`` (``Registry(url).send_group``), ``channels-redis`` / ``channels-pubsub``
(``channel_layer.group_send``) or ``socketio`` (``AsyncRedisManager(write_only=True).emit``).
It connects, waits ``--delay`` seconds so the clients are listening, then publishes on a fixed
schedule, each message stamped with its publish time.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import uvloop

from . import protocol

Publish = Callable[[str], Awaitable[object]]


async def open_publisher(kind: str, url: str, stack: AsyncExitStack) -> Publish:
    if kind == "asgi_groups":
        from asgi_groups import Registry

        registry = await stack.enter_async_context(Registry(url))

        async def publish(text: str) -> None:
            await registry.send_group(protocol.GROUP, text)

        return publish
    if kind.startswith("channels-"):
        from .apps.channels_app import configure, event

        configure(kind.removeprefix("channels-"), url)
        from channels.layers import get_channel_layer

        layer = get_channel_layer()

        async def group_send(text: str) -> None:
            await layer.group_send(protocol.GROUP, event(text))

        return group_send
    if kind == "socketio":
        import socketio

        manager = socketio.AsyncRedisManager(url, write_only=True)

        async def emit(text: str) -> None:
            await manager.emit(protocol.SIO_MESSAGE, text, namespace="/", room=protocol.GROUP)

        return emit
    raise SystemExit(f"unknown publisher {kind!r}")


async def run(args: argparse.Namespace) -> None:
    async with AsyncExitStack() as stack:
        publish = await open_publisher(args.kind, args.redis, stack)
        await asyncio.sleep(args.delay)
        await protocol.run_steady(publish, args.rate, args.seconds, args.size)
        await asyncio.sleep(0.5)  # let the last publishes leave before closing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind")
    parser.add_argument("--redis", required=True)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--delay", type=float, default=1.0)
    uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
