"""The chat example with ``CHAT_AMQP_URL``: queue messages shown to the right users, as messages
from their ``from``, on each framework; ``examples/amqp_publish.py`` publishes them."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from examples.chat import fastapi_app, quart_app, starlette_app
from examples.chat.common import ChatConfig
from tests.support.amqp import AMQP_URL, Names, publish, take_dead, unique_names
from tests.support.chat import Site
from tests.support.servers import serve

pytest.importorskip("aio_pika", reason="pip install -e '.[amqp]'")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def names() -> AsyncIterator[Names]:
    async for found in unique_names():
        yield found


async def publish_script(queue: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "amqp_publish.py"),
        "--url",
        AMQP_URL,
        "--queue",
        queue,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(20):
        out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()


def test_the_chat_reads_its_amqp_settings() -> None:
    config = ChatConfig.from_env({"CHAT_SECRET_KEY": "s", "CHAT_AMQP_URL": AMQP_URL})
    assert (config.amqp_url, config.amqp_queue) == (AMQP_URL, "ws_messages")
    other = ChatConfig.from_env({"CHAT_SECRET_KEY": "s", "CHAT_AMQP_QUEUE": "q"})
    assert (other.amqp_url, other.amqp_queue) == (None, "q")


@pytest.mark.parametrize(
    "module",
    [
        pytest.param(fastapi_app, id="fastapi", marks=pytest.mark.soak),
        pytest.param(starlette_app, id="starlette"),
        pytest.param(quart_app, id="quart", marks=pytest.mark.soak),
    ],
)  # the framework adds nothing here the chat tests do not cover: one in the default suite
async def test_queue_messages_reach_the_right_users_in_the_chat(
    module: Any, names: Names, tmp_path: Path
) -> None:
    config = dataclasses.replace(
        ChatConfig(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}", secret_key="amqp-test"
        ),
        amqp_url=AMQP_URL,
        amqp_queue=names.queue,
    )
    async with serve(module.create_app(config)) as address:
        site = Site(address)
        greg, amanda = await site.tab("greg"), await site.tab("amanda")
        try:
            out = await publish_script(names.queue, "--group", "boys", "--from", "ops", "hi")
            message_id = out.split()[1]
            got = await greg.next()
            assert got["type"] == "group" and got["group"] == "boys"
            assert (got["from"], got["text"], got["id"]) == ("ops", "hi", message_id)
            assert await amanda.quiet()

            await publish(
                names.queue,
                [
                    {"target": "user", "name": "Amanda", "data": {"text": "for you"}},
                    {"target": "broadcast", "data": {"text": "everyone", "from": "admin"}},
                    {"target": "user", "name": "mallory", "data": {"text": "x"}},
                    {"target": "group", "name": "boys", "data": {"txt": "x"}},
                ],
                ids=["d1", "b1", "x1", "x2"],
            )
            direct = await amanda.next()
            assert (direct["type"], direct["to"], direct["from"]) == ("direct", "amanda", "system")
            assert (direct["text"], direct["id"]) == ("for you", "d1")
            for tab in (greg, amanda):
                everyone = await tab.next()
                assert (everyone["type"], everyone["from"], everyone["id"]) == (
                    "broadcast",
                    "admin",
                    "b1",
                )
            dead = {
                m.message_id: m.headers["x-asgi-groups-reason"]
                for m in await take_dead(names.dead, 2)
            }
            assert dead == {"x1": "unknown_user", "x2": "invalid"}
            assert await greg.quiet() and await amanda.quiet()
        finally:
            await greg.close()
            await amanda.close()


async def test_without_lifespan_the_source_starts_with_the_registry(
    names: Names, tmp_path: Path
) -> None:
    """A server that runs no lifespan (daphne, ``--lifespan off``): the registry starts with
    the first socket, and its AMQP source with it."""
    config = dataclasses.replace(
        ChatConfig(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}", secret_key="amqp-test"
        ),
        amqp_url=AMQP_URL,
        amqp_queue=names.queue,
    )
    async with serve(starlette_app.create_app(config)):
        pass  # the example makes and seeds its database in its lifespan: once, beforehand
    async with serve(starlette_app.create_app(config), lifespan="off") as address:
        greg = await Site(address).tab("greg")
        try:
            await publish(
                names.queue, [{"target": "group", "name": "boys", "data": {"text": "up"}}]
            )
            got = await greg.next(timeout=15)
            assert (got["type"], got["from"], got["text"]) == ("group", "system", "up")
        finally:
            await greg.close()
