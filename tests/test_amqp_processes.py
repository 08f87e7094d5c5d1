"""A RabbitMQ queue feeding two uvicorn processes on one Redis, read by real websocket clients:
every message reaches exactly its recipients, through a killed AMQP connection and a stopped
Redis, and what cannot be delivered is dead-lettered."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.amqp import (
    AMQP_URL,
    Names,
    close_connections,
    declare,
    delete,
    depth,
    publish,
    require_rabbitmq,
    take_dead,
)
from tests.support.redis import RedisServer, WsClient, child_env
from tests.support.servers import serve_process

pytest.importorskip("aio_pika", reason="pip install -e '.[amqp]'")

APP = "tests.redis_apps.amqp_app:app"
BOYS, GIRLS = ("greg", "chuck", "mike"), ("amanda", "lisa", "anny")
USERS = BOYS + GIRLS
#: (user, groups, server 0 or 1): the six seed users split over both processes, greg twice.
SOCKETS = [
    ("greg", "boys", 0),
    ("greg", "boys", 1),
    ("chuck", "boys", 1),
    ("mike", "boys", 0),
    ("amanda", "girls", 1),
    ("lisa", "girls", 0),
    ("anny", "girls", 1),
]


@dataclass
class Cluster:
    names: Names
    addresses: tuple[str, str]
    redis: RedisServer


@dataclass
class Reader:
    """One socket: the ids it should get, and every id it got (copies included)."""

    user: str
    group: str
    client: WsClient
    expected: set[str] = field(default_factory=set)
    got: Counter[str] = field(default_factory=Counter)

    async def collect(self, timeout: float) -> None:
        """Read until every expected id came (then a little more, for copies) or ``timeout``."""
        async with asyncio.timeout(timeout):
            while not self.expected <= set(self.got):
                self.got[json.loads(await self.client.message(timeout))["id"]] += 1
        with pytest.raises(TimeoutError):
            while True:  # anything more (a copy, a stray) within a short while
                self.got[json.loads(await self.client.message(0.3))["id"]] += 1


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer) -> Iterator[Cluster]:
    require_rabbitmq()
    if not redis_server.running:
        redis_server.start()
    names = Names.new()
    asyncio.run(declare(names))
    env = child_env(
        redis_server.url,
        "a" + uuid.uuid4().hex[:10],
        ASGI_GROUPS_AMQP_URL=AMQP_URL,
        ASGI_GROUPS_AMQP_QUEUE=names.queue,
        ASGI_GROUPS_AMQP_NAME=names.connection_name,
        ASGI_GROUPS_AMQP_RESUME="1.0",
    )
    try:
        with serve_process(APP, env=env) as (a, _), serve_process(APP, env=env) as (b, _):
            yield Cluster(names, (a, b), redis_server)
    finally:
        asyncio.run(delete(names))


async def open_readers(cluster: Cluster) -> list[Reader]:
    readers = []
    for user, group, server in SOCKETS:
        client = await WsClient.open(cluster.addresses[server], user, (group,))
        readers.append(Reader(user, group, client))
    return readers


def messages(count: int, tag: str) -> list[dict[str, Any]]:
    """Groups, users and broadcasts in turn; data carries no id (the message_id goes there)."""
    bodies: list[dict[str, Any]] = []
    for n in range(count):
        kind = n % 4
        if kind == 0:
            bodies.append({"target": "group", "name": "boys", "data": {"n": n}})
        elif kind == 1:
            bodies.append({"target": "group", "name": "girls", "data": {"n": n}})
        elif kind == 2:
            bodies.append({"target": "user", "name": USERS[n // 4 % 6], "data": {"n": n}})
        else:
            bodies.append({"target": "broadcast", "data": {"n": n}})
    return bodies


def expect(readers: list[Reader], bodies: list[dict[str, Any]], ids: list[str]) -> None:
    for body, message_id in zip(bodies, ids, strict=True):
        for reader in readers:
            if (
                body["target"] == "broadcast"
                or (body["target"] == "group" and body["name"] == reader.group)
                or (body["target"] == "user" and body["name"] == reader.user)
            ):
                reader.expected.add(message_id)


async def run(cluster: Cluster, count: int, during: Any = None) -> list[Reader]:
    """Publish ``count`` messages while the readers read; ``during()`` runs meanwhile."""
    readers = await open_readers(cluster)
    tag = uuid.uuid4().hex[:6]
    bodies = messages(count, tag)
    ids = [f"{tag}-{n}" for n in range(count)]
    expect(readers, bodies, ids)
    try:
        collecting = [asyncio.create_task(r.collect(60)) for r in readers]
        await publish(cluster.names.queue, bodies[: count // 2], ids=ids[: count // 2])
        if during is not None:
            await during()
        await publish(cluster.names.queue, bodies[count // 2 :], ids=ids[count // 2 :])
        await asyncio.gather(*collecting)
    finally:
        for reader in readers:
            await reader.client.close()
    return readers


async def test_a_thousand_messages_reach_exactly_their_recipients(cluster: Cluster) -> None:
    readers = await run(cluster, 1000)
    for reader in readers:
        assert set(reader.got) == reader.expected, reader.user
        assert max(reader.got.values()) == 1, reader.user  # none twice
    # 250 for each group, 250 broadcasts, 250 / 6 to each user (every tab)
    assert len(readers[0].expected) == 250 + 250 + 42
    assert await depth(cluster.names.queue) == 0


async def test_a_killed_amqp_connection_loses_nothing_and_consuming_resumes(
    cluster: Cluster,
) -> None:
    closed = 0

    async def kill() -> None:
        nonlocal closed
        await asyncio.sleep(0.05)  # the consumers are busy with the first half
        closed = await close_connections(cluster.names.connection_name)

    readers = await run(cluster, 600, kill)
    assert closed == 2  # one per process, closed by the broker
    for reader in readers:
        assert set(reader.got) == reader.expected, reader.user  # copies carry the same id
    assert await depth(cluster.names.queue) == 0


async def test_a_stopped_redis_holds_the_messages_in_the_queue_until_it_returns(
    cluster: Cluster,
) -> None:
    readers = await open_readers(cluster)
    tag = uuid.uuid4().hex[:6]
    bodies = messages(40, tag)
    ids = [f"{tag}-{n}" for n in range(40)]
    expect(readers, bodies, ids)
    try:
        cluster.redis.kill()
        await asyncio.sleep(1.5)  # both processes see it (health checks every second)
        await publish(cluster.names.queue, bodies, ids=ids)
        await asyncio.sleep(1.5)
        assert await depth(cluster.names.queue) == 40  # none acknowledged
        for reader in readers:
            with pytest.raises(TimeoutError):
                await reader.client.message(0.05)
        cluster.redis.start()
        await asyncio.gather(*(r.collect(30) for r in readers))
        for reader in readers:
            assert set(reader.got) == reader.expected, reader.user
        assert await depth(cluster.names.queue) == 0
    finally:
        if not cluster.redis.running:
            cluster.redis.start()
        for reader in readers:
            await reader.client.close()


async def test_what_cannot_be_delivered_is_dead_lettered_and_the_rest_goes_on(
    cluster: Cluster,
) -> None:
    readers = await open_readers(cluster)
    bad: list[bytes | dict[str, Any]] = [
        b"<xml/>",
        {"target": "everyone", "data": 1},
        {"target": "group", "name": "nobody", "data": 1},
        {"target": "user", "name": "mallory", "data": 1},
        {"target": "group", "name": "boys", "data": "x" * (2 * 1024 * 1024)},
        {"target": "broadcast", "data": {"n": 1}},
    ]
    tag = uuid.uuid4().hex[:6]
    try:
        await publish(cluster.names.queue, bad, ids=[f"{tag}-{n}" for n in range(6)])
        for reader in readers:
            assert json.loads(await reader.client.message(10)) == {"n": 1, "id": f"{tag}-5"}
        dead = await take_dead(cluster.names.dead, 5)
        reasons = sorted(str(m.headers["x-asgi-groups-reason"]) for m in dead)
        assert reasons == ["invalid", "not_json", "too_large", "unknown_group", "unknown_user"]
    finally:
        for reader in readers:
            await reader.client.close()
