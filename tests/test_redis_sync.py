"""``registry.sync`` from threads, asgiref bridges and plain scripts, on a real Redis."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import async_to_sync, sync_to_async

from asgi_groups import Registry, RegistryClosed, SimpleUser
from asgi_groups.backends.redis import RedisBackend
from tests.support.redis import Inbox, RedisServer

FAST = {"health_check_interval": 0.5, "socket_timeout": 1.0, "connect_timeout": 1.0}


async def test_from_worker_threads_and_asgiref_bridges(redis_url: str, prefix: str) -> None:
    async with Registry(redis_url, prefix=prefix, **FAST) as registry:
        inbox = Inbox()
        conn = await registry.connect(inbox, SimpleUser(1, "one"))
        await registry.join(conn, "boys")

        # a plain worker thread: the coroutine runs on the registry's loop
        await asyncio.to_thread(registry.sync.send_group, "boys", "from a thread")
        assert await inbox.text() == "from a thread"
        assert await asyncio.to_thread(registry.sync.presence, "boys") == {"1": 1}

        # sync code inside sync_to_async, and async_to_sync back out of it
        await sync_to_async(registry.sync.send_user)(1, "via sync_to_async")
        assert await inbox.text() == "via sync_to_async"
        await sync_to_async(lambda: async_to_sync(registry.broadcast)("via async_to_sync"))()
        assert await inbox.text() == "via async_to_sync"

        assert not registry.sync.private_loop

        # called on the loop itself it would block it: refused
        with pytest.raises(RuntimeError, match="await"):
            registry.sync.send_group("boys", "no")

        await asyncio.to_thread(registry.sync.disconnect_user, 1)
        assert await inbox.close_code() == 4401


def test_a_plain_script_gets_one_private_loop_and_one_pool(
    redis_server: RedisServer, prefix: str
) -> None:
    with redis_server.client() as raw, raw.pubsub() as listener:
        listener.subscribe(f"{prefix}:g:boys")
        assert listener.get_message(timeout=2)["type"] == "subscribe"

        registry = Registry(redis_server.url, prefix=prefix, **FAST)
        assert isinstance(registry.backend, RedisBackend)
        name = f"{prefix}:{registry.backend.process_id}"
        with registry.sync as sync:
            for i in range(25):
                sync.send_group("boys", f"m{i}")
            assert sync.private_loop and registry.started
            loop_thread = [t for t in threading.enumerate() if t.name == "asgi_groups-sync"]
            assert len(loop_thread) == 1
            assert sync.presence("boys") == {}
            # one pub/sub connection, one pooled command connection and the one kept for
            # publishes, however many calls
            assert len(redis_server.clients(name)) == 3
        assert not registry.started
        assert redis_server.clients(name) == []
        assert not [t for t in threading.enumerate() if t.name == "asgi_groups-sync"]

        data = []
        while len(data) < 25:
            message = listener.get_message(timeout=2)
            assert message is not None
            data.append(message["data"])
        assert [d[3:] for d in data] == [f"m{i}" for i in range(25)]


async def test_a_registry_whose_loop_stopped_is_refused(redis_url: str, prefix: str) -> None:
    registry = Registry(redis_url, prefix=prefix, **FAST)
    loop = asyncio.new_event_loop()
    try:
        await asyncio.to_thread(loop.run_until_complete, registry.start())
        # started, but nothing runs its loop: a call would wait forever, so it is refused
        with pytest.raises(RegistryClosed, match="not running"):
            await asyncio.to_thread(registry.sync.send_group, "boys", "x")
    finally:
        await asyncio.to_thread(loop.run_until_complete, registry.close())
        loop.close()
