"""``asgi-groups stats --redis URL --prefix P``: every process's published snapshot, per process
and in total, the largest groups, a group's presence; ``--json`` for scripts."""

from __future__ import annotations

import asyncio
import json

import pytest

from asgi_groups import Registry, SimpleUser
from asgi_groups.cli import main
from asgi_groups.health import STATS_TTL_INTERVALS, StatsReporter

from .fakes import Outbox
from .support.redis import FAST, RedisServer


async def test_stats_show_every_process_and_the_total(
    redis_server: RedisServer, redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    registries = [Registry(redis_url, prefix=prefix, **FAST) for _ in range(2)]
    reporters = [StatsReporter(registry, interval=60.0) for registry in registries]
    for registry, reporter in zip(registries, reporters, strict=True):
        registry.add_companion(reporter)
        await registry.start()
    try:
        first, second = registries
        for user_id in (1, 2, 3):
            conn = await first.connect(Outbox(), SimpleUser(user_id, f"u{user_id}"))
            await first.join(conn, "big")
        conn = await second.connect(Outbox(), SimpleUser(4, "u4"))
        await second.join(conn, "big")
        await second.join(conn, "small")
        for reporter in reporters:
            await reporter.publish()
        argv = ["stats", "--redis", redis_url, "--prefix", prefix]
        assert await asyncio.to_thread(main, [*argv, "--json", "--group", "big"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert sorted(p["connections"] for p in report["processes"]) == [1, 3]
        assert all(p["backend"] == {**p["backend"], "up": True} for p in report["processes"])
        total = report["total"]
        assert (total["connections"], total["users"], total["backends_down"]) == (4, 4, 0)
        assert total["largest_groups"][:2] == [
            {"group": "big", "connections": 4},
            {"group": "small", "connections": 1},
        ]
        assert report["presence"] == {"group": "big", "users": {"1": 1, "2": 1, "3": 1, "4": 1}}
        assert await asyncio.to_thread(main, argv) == 0
        table = capsys.readouterr().out
        assert "total (2 processes)" in table and "big" in table
        key = first.backend.stats_key()  # type: ignore[attr-defined]
        with redis_server.client() as client:  # a process that dies drops out after the TTL
            assert 0 < client.pttl(key) <= 60_000 * STATS_TTL_INTERVALS
    finally:
        for registry in registries:
            await registry.close()


def test_stats_need_a_redis_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--redis", ""]) == 2
    assert "Redis URL is required" in capsys.readouterr().err


def test_stats_of_an_unreachable_redis_fail_with_1(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stats", "--redis", "redis://127.0.0.1:1/0"]) == 1
    assert "cannot read stats" in capsys.readouterr().err
