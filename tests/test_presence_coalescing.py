"""Presence coalesced per group: a storm of N connects costs O(N) presence frames, and every
client still ends with the right list (flushed by hand: no timers, no timing)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from asgi_groups import GroupsMiddleware, InMemoryUsers, Registry, SimpleUser
from asgi_groups.messaging import MessagingView, StaticDirectory, presence_batcher
from asgi_groups.testing import WebSocketTestClient

from .support.codecs import PlainCookie

N = 200
PEOPLE = [SimpleUser(i, f"user{i:03d}", frozenset({"hall"})) for i in range(1, N + 1)]


class Manual(MessagingView):
    """Presence is sent only when the test flushes it."""

    presence_interval = None
    rate_limit = None
    user_rate_limit = None


class Client:
    """One socket and the presence list it has built from what it received."""

    def __init__(self, app: Any, user: SimpleUser) -> None:
        self.ws = WebSocketTestClient(app, cookies={"session": str(user.id)})
        self.users: set[str] = set()
        self.frames = 0

    def drain(self) -> None:
        """Apply every frame received so far."""
        queue = self.ws._communicator.output_queue
        while not queue.empty():
            event = queue.get_nowait()
            for line in event.get("text", "").split("\n"):
                frame = json_loads(line)
                if frame.get("type") == "presence":
                    self.frames += 1
                    self.users = set(frame["users"])
                elif frame.get("type") == "presence_diff":
                    self.frames += 1
                    self.users -= set(frame["leaves"])
                    self.users |= set(frame["joins"])


def json_loads(line: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(line) if line else {}
    return value


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_storm_of_connects_costs_linear_presence_frames_and_ends_right() -> None:
    async with Registry() as registry:
        endpoint = Manual.as_asgi(directory=StaticDirectory(PEOPLE))
        app = GroupsMiddleware(
            endpoint, registry, sessions=PlainCookie(), users=InMemoryUsers(PEOPLE)
        )
        batcher = presence_batcher(registry)
        clients = [Client(app, user) for user in PEOPLE]
        for start in range(0, N, 20):  # connects arrive in bursts; the interval ends after each
            for client in clients[start : start + 20]:
                assert await client.ws.connect()
            await settle()
            await batcher.flush()
        await batcher.flush(force=True)
        await settle()
        for client in clients:
            client.drain()
        everyone = {user.username for user in PEOPLE}
        assert all(client.users == everyone for client in clients)
        total = sum(client.frames for client in clients)
        print(f"presence frames for {N} connects: {total}")
        assert total <= 4 * N, total  # one frame per connect per member would be ~N²/2 = 20,100
        assert batcher.frames_sent == total

        for client in clients[: N // 2]:  # half of them leave
            await client.ws.disconnect()
        await settle()
        await batcher.flush(force=True)
        await settle()
        stayed = clients[N // 2 :]
        for client in stayed:
            client.drain()
        assert all(client.users == {u.username for u in PEOPLE[N // 2 :]} for client in stayed)
        for client in stayed:
            await client.ws.disconnect()


async def test_a_small_group_gets_the_whole_list_once_per_flush() -> None:
    async with Registry() as registry:
        endpoint = Manual.as_asgi(directory=StaticDirectory(PEOPLE))
        app = GroupsMiddleware(
            endpoint, registry, sessions=PlainCookie(), users=InMemoryUsers(PEOPLE)
        )
        clients = [Client(app, user) for user in PEOPLE[:5]]
        for client in clients:
            assert await client.ws.connect()
        await settle()
        await presence_batcher(registry).flush()
        await settle()
        for client in clients:
            client.drain()
        names = {user.username for user in PEOPLE[:5]}
        assert all(client.users == names for client in clients)
        # each got the list on connect, then one coalesced update: not one per connect
        assert [client.frames for client in clients] == [2] * 5
        for client in clients:
            await client.ws.disconnect()
