"""Django Channels under test: ``AsyncWebsocketConsumer`` in one group, ``group_send`` to it.

Django settings are configured in code (no project directory). ``layer`` is ``memory``
(``InMemoryChannelLayer``), ``redis`` (``RedisChannelLayer``) or ``pubsub``
(``RedisPubSubChannelLayer``), each with its default options except a larger Redis pool.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .. import protocol

#: redis-py's pool holds 100 connections and raises ``MaxConnectionsError`` beyond; a few
#: hundred consumers connecting or leaving at once exceed that, so the pool is enlarged.
POOL_SIZE = 2000
#: redis-py 8 reads with a 5 s ``socket_timeout`` by default, which aborts RedisChannelLayer's
#: blocking ``BZPOPMIN`` (``TimeoutError`` in every idle consumer's receive, the consumer torn
#: down): the fix its users apply is no client-side timeout (django/channels_redis#422).
HOST_OPTIONS: dict[str, Any] = {"max_connections": POOL_SIZE, "socket_timeout": None}

LAYERS = {
    "memory": "channels.layers.InMemoryChannelLayer",
    "redis": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}


def configure(layer: str, redis_url: str | None, **extra: Any) -> None:
    """Configure Django once, with the chosen channel layer (also used by the publisher);
    ``extra`` settings are added or replace the defaults."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    backend: dict[str, Any] = {"BACKEND": LAYERS[layer]}
    if layer != "memory":
        backend["CONFIG"] = {"hosts": [{"address": redis_url, **HOST_OPTIONS}]}
    defaults: dict[str, Any] = {
        "DEBUG": False,
        "SECRET_KEY": "benchmark",
        "ALLOWED_HOSTS": ["*"],
        "INSTALLED_APPS": ["channels"],
        "CHANNEL_LAYERS": {"default": backend},
        "USE_TZ": True,
    }
    settings.configure(**(defaults | extra))
    django.setup()


def event(text: str) -> dict[str, str]:
    """The channel-layer event a consumer turns into one text frame."""
    return {"type": "bench.message", "text": text}


def create_app(layer: str = "memory", redis_url: str | None = None) -> Any:
    configure(layer, redis_url)
    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.urls import path

    tasks: set[asyncio.Task[None]] = set()

    class BenchConsumer(AsyncWebsocketConsumer):
        groups = [protocol.GROUP]

        async def publish(self, text: str) -> None:
            await self.channel_layer.group_send(protocol.GROUP, event(text))

        async def receive(self, text_data: str | None = None, bytes_data: Any = None) -> None:
            cmd = protocol.parse(text_data)
            if cmd is None:
                return
            if cmd.op == "burst":
                m, size = int(cmd.args[0]), int(cmd.args[1])
                for seq in range(m):
                    await self.publish(protocol.message(seq, size))
            elif cmd.op == "steady":
                rate, seconds, size = cmd.args
                protocol.spawn(protocol.run_steady(self.publish, rate, seconds, int(size)), tasks)
            elif cmd.op == "fill":
                for chunk in protocol.fill_chunks(int(cmd.args[0])):
                    await self.send(text_data=chunk)

        async def bench_message(self, event: dict[str, str]) -> None:
            await self.send(text_data=event["text"])

    routes = URLRouter([path("ws", BenchConsumer.as_asgi())])
    return ProtocolTypeRouter({"websocket": routes})
