"""Memory per chat socket, in process: ``python -m benchmarks.chat_memory [--sockets N] [--top K]``.

The chat apps of :mod:`benchmarks.rooms` (``raw-chat``, the floor, and ``groups``, asgi_groups'
``MessagingView``) driven through :class:`asgi_groups.testing.WebSocketTestClient`, no server:
the bytes ``tracemalloc`` counts per open, logged-in socket (the test client's own queues are
the same for both, so the difference is the app's), and the allocation sites asgi_groups holds
the most per socket. Server RSS cannot tell this apart: a socket's permessage-deflate state is
only touched by its first frame, which asgi_groups' hello sends and the floor does not.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tracemalloc
from typing import Any

from asgi_groups.testing import WebSocketTestClient

from . import chat
from .apps import chat_groups
from .rooms import people


def build(system: str, sockets: int) -> tuple[Any, dict[int, dict[str, str]], list[chat.Person]]:
    """The app, each user's cookies, and the users (rooms of 5, as in the rooms benchmark)."""
    persons = people(sockets, 5)
    if system == "raw-chat":
        app = chat.raw_chat_app(persons)
        cookies = {p.id: {"user": str(p.id)} for p in persons}
    else:
        options = chat.Options(presence=False, echo=False)
        app = chat_groups.create_app(persons, options, None)
        cookies = {}
        for user_id, header in chat_groups.logins(persons).items():
            name, _, value = header.partition("=")
            cookies[user_id] = {name: value}
    return app, cookies, persons


async def measure(system: str, sockets: int) -> tuple[float, list[tracemalloc.StatisticDiff]]:
    """Bytes per open socket of ``system``, and where they were allocated."""
    app, cookies, persons = build(system, sockets + 1)
    first = WebSocketTestClient(app, "/ws", cookies=cookies[persons[0].id])
    assert await first.connect()  # imports, caches and the registry's start are not counted
    gc.collect()
    tracemalloc.start(8)
    before = tracemalloc.take_snapshot()
    clients = []
    for person in persons[1:]:
        client = WebSocketTestClient(app, "/ws", cookies=cookies[person.id])
        if not await client.connect():
            raise SystemExit(f"{system}: user {person.id} was refused ({client.status})")
        if system == "groups":
            await client.receive()  # the hello
        clients.append(client)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    diffs = after.compare_to(before, "traceback")
    for client in clients:
        await client.disconnect()
    return sum(d.size_diff for d in diffs) / sockets, diffs


def library_site(diff: tracemalloc.StatisticDiff) -> str | None:
    """The innermost asgi_groups line (not the test client) that led to an allocation."""
    for frame in reversed(diff.traceback):  # innermost first
        name = frame.filename
        if "asgi_groups/" in name and not name.endswith("testing.py"):
            return f"asgi_groups/{name.rpartition('asgi_groups/')[2]}:{frame.lineno}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--top", type=int, default=8, help="allocation sites of groups shown")
    args = parser.parse_args()
    floor, _ = asyncio.run(measure("raw-chat", args.sockets))
    groups, diffs = asyncio.run(measure("groups", args.sockets))
    print(f"| system | bytes per socket ({args.sockets:,} sockets, in process) |")
    print("|---|---|")
    print(f"| raw-chat (the floor) | {floor:,.0f} |")
    print(f"| asgi_groups | {groups:,.0f} (+{groups - floor:,.0f}) |")
    sites: dict[str, int] = {}
    for diff in diffs:
        site = library_site(diff)
        if site is not None:
            sites[site] = sites.get(site, 0) + diff.size_diff
    print("\nWhat asgi_groups' own lines allocated, bytes per socket:")
    for site, size in sorted(sites.items(), key=lambda item: -item[1])[: args.top]:
        print(f"{size / args.sockets:8,.0f}  {site}")


if __name__ == "__main__":
    main()
