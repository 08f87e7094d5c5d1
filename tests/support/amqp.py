"""The local RabbitMQ for the AMQP source's tests: uniquely named queues, publishing, reading the
dead letters, and closing the source's connections from the broker's side."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import pytest

AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672
AMQP_URL = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/"
HOW_TO_GET_IT = (
    "RabbitMQ is not listening on 127.0.0.1:5672: start it with 'rabbitmq-server -detached' "
    "(apt-get install rabbitmq-server)"
)


def rabbitmq_running() -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((AMQP_HOST, AMQP_PORT)) == 0


def require_rabbitmq() -> str:
    """The broker's URL, or skip the test saying how to get one."""
    if not rabbitmq_running():
        pytest.skip(HOW_TO_GET_IT)
    return AMQP_URL


@dataclass
class Names:
    """A queue, its dead-letter exchange and queue, and a connection name, all unique."""

    queue: str
    connection_name: str

    @property
    def dead(self) -> str:
        return f"{self.queue}.dead"

    @classmethod
    def new(cls) -> Names:
        tag = uuid.uuid4().hex[:10]
        return cls(f"test-ws-{tag}", f"asgi-groups-test-{tag}")


async def declare(names: Names) -> None:
    """What the source declares, so that publishing can start before it runs."""
    async with await aio_pika.connect(AMQP_URL) as connection:
        channel = await connection.channel()
        dead = await channel.declare_exchange(
            names.dead, aio_pika.ExchangeType.FANOUT, durable=True
        )
        parked = await channel.declare_queue(names.dead, durable=True)
        await parked.bind(dead)
        await channel.declare_queue(names.queue, durable=True)


async def delete(names: Names) -> None:
    async with await aio_pika.connect(AMQP_URL) as connection:
        channel = await connection.channel()
        for queue in (names.queue, names.dead):
            await channel.queue_delete(queue)
        await channel.exchange_delete(names.dead)


async def unique_names() -> AsyncIterator[Names]:
    """A fixture body: declared names, deleted afterwards."""
    require_rabbitmq()
    names = Names.new()
    await declare(names)
    try:
        yield names
    finally:
        await delete(names)


async def publish(
    queue: str, bodies: list[bytes | dict[str, Any]], *, ids: list[str] | None = None
) -> None:
    """Publish ``bodies`` (dicts as JSON) persistently to ``queue``, with confirms."""
    async with await aio_pika.connect(AMQP_URL) as connection:
        channel = await connection.channel(publisher_confirms=True)
        for i, body in enumerate(bodies):
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            message = aio_pika.Message(
                raw,
                message_id=ids[i] if ids else None,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await channel.default_exchange.publish(message, routing_key=queue)


async def depth(queue: str) -> int:
    """Messages in ``queue`` ready or held unacknowledged by a consumer (not yet done)."""
    out = await asyncio.to_thread(
        subprocess.run,
        ["rabbitmqctl", "-q", "list_queues", "name", "messages"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue:
            return int(parts[1])
    raise AssertionError(f"queue {queue!r} not listed: {out.stdout}")


async def take_dead(
    queue: str, count: int, timeout: float = 10.0
) -> list[aio_pika.IncomingMessage]:
    """Read (and acknowledge) ``count`` messages from a dead-letter queue."""
    found: list[Any] = []
    async with await aio_pika.connect(AMQP_URL) as connection:
        channel = await connection.channel()
        parked = await channel.get_queue(queue)
        async with asyncio.timeout(timeout):
            while len(found) < count:
                message = await parked.get(fail=False)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                await message.ack()
                found.append(message)
    return found


async def close_connections(connection_name: str) -> int:
    """Close, from the broker's side, every connection whose name starts with
    ``connection_name``; returns how many."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl not found: apt-get install rabbitmq-server")

    def run(*args: str) -> str:
        return subprocess.run(
            ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=30, check=True
        ).stdout

    listing = await asyncio.to_thread(run, "list_connections", "pid", "client_properties")
    closed = 0
    for line in listing.splitlines():
        if connection_name not in line:
            continue
        pid = line.split("\t", 1)[0]
        await asyncio.to_thread(run, "close_connection", pid.strip(), "closed by a test")
        closed += 1
    return closed
