"""Two uvicorn processes on one Redis, driven by real websocket clients."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.redis import RedisServer, WsClient, child_env, eventually
from tests.support.servers import free_port, serve_process

APP = "tests.redis_apps.groups_app:app"

Servers = tuple[str, str, str]


@pytest.fixture(scope="module")
def servers(redis_server: RedisServer) -> Iterator[Servers]:
    """Two server processes sharing one prefix (each test uses its own groups and users)."""
    if not redis_server.running:
        redis_server.start()
    prefix = "p" + uuid.uuid4().hex[:10]
    env = child_env(redis_server.url, prefix)
    with serve_process(APP, env=env) as (a, _), serve_process(APP, env=env) as (b, _):
        yield a, b, prefix


def tag() -> str:
    return uuid.uuid4().hex[:6]


async def presence(client: WsClient, group: str) -> dict[str, int]:
    return dict((await client.command("presence", group=group))["presence"])


async def test_group_messages_and_exclude_across_processes(servers: Servers) -> None:
    a, b, _ = servers
    boys, girls = f"boys{tag()}", f"girls{tag()}"
    alice = await WsClient.open(a, f"u{tag()}", (boys,))
    bob = await WsClient.open(b, f"u{tag()}", (boys,))
    carol = await WsClient.open(b, f"u{tag()}", (girls,))
    try:
        assert (await alice.command("send_group", group=boys, text="hi boys"))["ok"]
        assert await alice.message() == "hi boys"
        assert await bob.message() == "hi boys"

        await bob.command("send_group", group=boys, text="not to myself", exclude_self=True)
        await alice.command("send_group", group=boys, text="marker")
        assert await alice.message() == "not to myself"
        assert await alice.message() == "marker"
        assert await bob.message() == "marker"  # bob skipped his own message

        await carol.command("send_group", group=girls, text="girls only")
        assert await carol.message() == "girls only"
        assert alice.inbox == [] and bob.inbox == []
    finally:
        for client in (alice, bob, carol):
            await client.close()


async def test_user_and_broadcast_across_processes(servers: Servers) -> None:
    a, b, _ = servers
    uid = f"u{tag()}"
    tab_a = await WsClient.open(a, uid)
    tab_b = await WsClient.open(b, uid)
    other = await WsClient.open(a, f"u{tag()}")
    try:
        await other.command("send_user", user=uid, text="to every tab")
        assert await tab_a.message() == "to every tab"
        assert await tab_b.message() == "to every tab"

        await tab_b.command("broadcast", text=f"everyone {uid}", exclude_self=True)
        assert await tab_a.message() == f"everyone {uid}"
        assert await other.message() == f"everyone {uid}"
        await other.command("send_user", user=uid, text="marker")
        assert await tab_a.message() == "marker"
        assert await tab_b.message() == "marker"  # not the broadcast it sent
    finally:
        for client in (tab_a, tab_b, other):
            await client.close()


async def test_presence_across_processes(servers: Servers) -> None:
    a, b, _ = servers
    room = f"room{tag()}"
    u1, u2 = f"u{tag()}", f"u{tag()}"
    first = await WsClient.open(a, u1, (room,))
    second = await WsClient.open(a, u1, (room,))
    third = await WsClient.open(b, u2, (room,))
    try:
        # the joins in the other process are visible as soon as the sockets are ready
        expected = {u1: 2, u2: 1}
        assert (await third.command("presence", group=room))["presence"] == expected
        assert (await first.command("presence", group=room))["presence"] == expected
        await second.close()
        await third.close()
        await eventually(lambda: presence(first, room), lambda p: p == {u1: 1})
    finally:
        await first.close()


async def test_remote_control_across_processes(servers: Servers) -> None:
    a, b, _ = servers
    banned, late = f"u{tag()}", f"u{tag()}"
    group = f"late{tag()}"
    tab_a = await WsClient.open(a, banned)
    tab_b = await WsClient.open(b, banned)
    admin = await WsClient.open(a, f"u{tag()}")
    newcomer = await WsClient.open(b, late)
    try:
        await admin.command("disconnect_user", user=banned)
        for tab in (tab_a, tab_b):
            with pytest.raises(ConnectionClosed):
                await tab.message()
            assert tab.ws.close_code == 4401

        await admin.command("join_user", user=late, group=group)
        await eventually(lambda: presence(admin, group), lambda p: p == {late: 1})
        await admin.command("send_group", group=group, text="welcome")
        assert await newcomer.message() == "welcome"
    finally:
        for client in (tab_a, tab_b, admin, newcomer):
            await client.close()


SYNC_SCRIPT = """
import os, sys
from asgi_groups import Registry
registry = Registry(os.environ["ASGI_GROUPS_REDIS_URL"], prefix=os.environ["ASGI_GROUPS_PREFIX"])
registry.sync.send_group(sys.argv[1], "from a sync script")
print(sorted(registry.sync.presence(sys.argv[1]).items()))
"""

PUBLISH_ONCE_SCRIPT = """
import asyncio, os, sys
from asgi_groups.publish import publish_once
asyncio.run(publish_once(
    os.environ["ASGI_GROUPS_REDIS_URL"], "published once", group=sys.argv[1],
    prefix=os.environ["ASGI_GROUPS_PREFIX"],
))
"""


async def run_script(script: str, env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(20):
        out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def test_external_publishers_reach_sockets_in_both_processes(
    servers: Servers, redis_server: RedisServer
) -> None:
    a, b, prefix = servers
    group = f"news{tag()}"
    u1, u2 = f"u{tag()}", f"u{tag()}"
    reader_a = await WsClient.open(a, u1, (group,))
    reader_b = await WsClient.open(b, u2, (group,))
    env = child_env(redis_server.url, prefix)
    try:
        out = await run_script(SYNC_SCRIPT, env, group)
        assert out.strip() == str(sorted({u1: 1, u2: 1}.items()))
        assert await reader_a.message() == "from a sync script"
        assert await reader_b.message() == "from a sync script"

        await run_script(PUBLISH_ONCE_SCRIPT, env, group)
        assert await reader_a.message() == "published once"
        assert await reader_b.message() == "published once"
    finally:
        await reader_a.close()
        await reader_b.close()


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asgi_groups.cli",
        "send",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_send_reaches_group_user_and_everyone_in_both_processes(
    servers: Servers, redis_server: RedisServer
) -> None:
    a, b, prefix = servers
    group = f"boys{tag()}"
    u1, u2 = f"u{tag()}", f"u{tag()}"
    in_group = await WsClient.open(a, u1, (group,))
    elsewhere = await WsClient.open(b, u2)
    env = {
        k: v for k, v in child_env(redis_server.url, prefix).items() if k != "ASGI_GROUPS_REDIS_URL"
    }
    target = ("--redis", redis_server.url, "--prefix", prefix)
    try:
        code, out, err = await run_cli(env, *target, "--group", group, "hello boys")
        assert (code, err) == (0, ""), err
        assert out.strip() == f"sent 10 bytes to group {group!r}: 1 process listening"
        assert await in_group.message() == "hello boys"

        code, out, err = await run_cli(env, *target, "--user", u2, "--json", '{"n": 1}')
        assert (code, out.strip()) == (0, f"sent 8 bytes to user {u2!r}: 1 process listening"), err
        assert await elsewhere.message() == '{"n":1}'

        code, out, err = await run_cli(env, *target, "--broadcast", "to all")
        assert (code, out.strip()) == (0, "sent 6 bytes to everyone: 2 processes listening"), err
        assert await in_group.message() == "to all"
        assert await elsewhere.message() == "to all"
        assert in_group.inbox == [] and elsewhere.inbox == []  # the user message went to u2 only
    finally:
        await in_group.close()
        await elsewhere.close()


async def test_cli_send_errors_are_one_line_with_exit_codes(redis_server: RedisServer) -> None:
    env = {
        k: v for k, v in child_env(redis_server.url, "x").items() if k != "ASGI_GROUPS_REDIS_URL"
    }
    down = f"redis://127.0.0.1:{free_port()}/0"
    code, _, err = await run_cli(env, "--redis", down, "--group", "g", "text")
    assert code == 1 and err.startswith("error: cannot reach Redis"), err
    assert len(err.strip().splitlines()) == 1, err  # no traceback
    code, _, err = await run_cli(env, "--redis", redis_server.url, "--group", "g", "--json", "{x")
    assert code == 2 and "not valid JSON" in err, err
    code, _, err = await run_cli(env, "--group", "g", "text")
    assert code == 2 and "a Redis URL is required" in err, err
    code, _, err = await run_cli(env, "--redis", redis_server.url, "text")
    assert code == 2 and "one of the arguments --group --user --broadcast is required" in err
