"""Many small rooms and direct messages: where the per-publish cost (decode, route, backend,
listener) dominates, not the per-socket write.

One server process runs MessagingView (signed cookie, user store); ``--sockets`` users in rooms
of ``--room`` each. For ``--rate`` s⁻¹ over ``--seconds``, random users send a Group message to
their room (``rooms``) or a Direct message to a random other user (``direct``). Reported per
backend (memory, then Redis, side by side in one run): server CPU per publish (and Redis's own),
the latency from send to the last recipient's frame, p50/p99, and messages lost.

    python -m benchmarks.rooms --sockets 1000 --workload rooms,direct
    python -m benchmarks.rooms serve memory --port 9000 --sockets 1000 --room 5   (spawned)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from pathlib import Path
from typing import Any

from .limits import raise_nofile
from .procs import free_port, kill, python, redis_server, spawn, wait_for_port
from .procstat import cpu_ns
from .storm import cookie_for

SECRET = "storm-benchmark-secret"  # the same signed cookie as the storm benchmark
#: Seconds to wait for the last frames after the last send.
DRAIN = 2.0


def people(sockets: int, room: int) -> list[Any]:
    from asgi_groups import SimpleUser

    return [
        SimpleUser(i, f"u{i}", frozenset({f"r{(i - 1) // room}"})) for i in range(1, sockets + 1)
    ]


def app(sockets: int, room: int, redis_url: str | None) -> Any:
    from asgi_groups import GroupsMiddleware, InMemoryUsers, Registry
    from asgi_groups.messaging import MessagingView, StaticDirectory
    from asgi_groups.sessions import SignedCookie

    users = people(sockets, room)

    class Chat(MessagingView):
        rate_limit = None
        user_rate_limit = None
        announce_presence = False  # steady traffic only: the storm benchmark measures presence
        echo_to_sender = False

    registry = Registry(redis_url) if redis_url else Registry()
    endpoint = Chat.as_asgi(directory=StaticDirectory(users), registry=registry)
    return GroupsMiddleware(
        endpoint, registry, sessions=SignedCookie(SECRET), users=InMemoryUsers(users)
    )


def serve(port: int, sockets: int, room: int, redis_url: str | None) -> None:
    from .serve import run_asgi

    raise_nofile()
    run_asgi(app(sockets, room, redis_url), "127.0.0.1", port, "websockets-sansio")


async def run(workload: str, backend: str, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    sockets, room = args.sockets, args.room
    redis_ctx = redis_server(log) if backend == "redis" else contextlib.nullcontext(None)
    async with redis_ctx as redis:
        port = free_port()
        cmd = ["serve", "--port", str(port), "--sockets", str(sockets), "--room", str(room)]
        if redis is not None:
            cmd += ["--redis", redis[0]]
        proc = spawn(python("benchmarks.rooms", *cmd), log)
        url, origin = f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}"
        expected: dict[str, tuple[float, int]] = {}  # id -> (sent at, recipients left)
        latencies: list[float] = []
        drained = asyncio.Event()  # set when every message sent so far has arrived
        socks: list[Any] = []
        readers: list[asyncio.Task[None]] = []

        async def read(ws: Any) -> None:
            with contextlib.suppress(Exception):
                async for data in ws:
                    for line in str(data).split("\n"):
                        if '"m:' not in line:
                            continue
                        key = json.loads(line)["text"][2:]
                        entry = expected.get(key)
                        if entry is None:
                            continue
                        sent, left = entry
                        if left <= 1:
                            del expected[key]
                            latencies.append(time.perf_counter() - sent)
                            if not expected:
                                drained.set()
                        else:
                            expected[key] = (sent, left - 1)

        try:
            await wait_for_port(port, proc)
            for start in range(0, sockets, 200):
                batch = await asyncio.gather(
                    *(
                        connect(
                            url,
                            origin=origin,  # type: ignore[arg-type]
                            additional_headers={"Cookie": cookie_for(i)},
                            open_timeout=120,
                            ping_interval=None,
                            max_queue=None,
                        )
                        for i in range(start + 1, min(sockets, start + 200) + 1)
                    )
                )
                socks.extend(batch)
            readers = [asyncio.create_task(read(ws)) for ws in socks]
            await asyncio.sleep(args.warmup)
            rng = random.Random(7)
            total = int(args.rate * args.seconds)
            pids = {"server": proc.pid}
            if redis is not None:
                pids["redis"] = redis[1]
            cpu0 = {name: cpu_ns(pid) for name, pid in pids.items()}
            t0 = time.perf_counter()
            for k in range(total):
                sender = rng.randrange(sockets)
                key = str(k)
                if workload == "rooms":
                    group = f"r{sender // room}"
                    members = min(room, sockets - (sender // room) * room)
                    body = {"type": "Group", "group": group, "text": f"m:{key}"}
                else:
                    target = rng.randrange(sockets - 1)
                    target += target >= sender
                    members = 1
                    body = {"type": "Direct", "user_name": f"u{target + 1}", "text": f"m:{key}"}
                expected[key] = (time.perf_counter(), members)
                await socks[sender].send(json.dumps(body))
                delay = t0 + (k + 1) / args.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if expected:
                drained.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(drained.wait(), DRAIN)
            cpu = {name: cpu_ns(pid) - cpu0[name] for name, pid in pids.items()}
            ordered = sorted(latencies)

            def pct(p: float) -> float:
                return (
                    ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else 0
                )

            return {
                "workload": workload,
                "backend": backend,
                "sockets": sockets,
                "room": room if workload == "rooms" else None,
                "publishes": total,
                "rate": args.rate,
                "server_cpu_per_publish_us": round(cpu["server"] / 1000 / total, 1),
                "redis_cpu_per_publish_us": round(cpu.get("redis", 0) / 1000 / total, 1),
                "p50_ms": round(pct(0.5), 2),
                "p99_ms": round(pct(0.99), 2),
                "lost": len(expected),
            }
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*(ws.close() for ws in socks), return_exceptions=True)
            kill(proc)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | backend | sockets | publishes | server CPU/publish (µs) | vs memory "
        "| Redis CPU/publish (µs) | p50 / p99 (ms) | lost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    memory = {r["workload"]: r for r in rows if r["backend"] == "memory"}
    for r in rows:
        base = memory.get(r["workload"])
        ratio = (
            f"{r['server_cpu_per_publish_us'] / base['server_cpu_per_publish_us']:.2f}x"
            if base
            else "-"
        )
        lines.append(
            f"| {r['workload']} | {r['backend']} | {r['sockets']} | {r['publishes']} "
            f"| {r['server_cpu_per_publish_us']} | {ratio} | {r['redis_cpu_per_publish_us']} "
            f"| {r['p50_ms']} / {r['p99_ms']} | {r['lost']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command")
    srv = sub.add_parser("serve")
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--sockets", type=int, default=1000)
    srv.add_argument("--room", type=int, default=5)
    srv.add_argument("--redis")
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--room", type=int, default=5, help="members per room")
    parser.add_argument("--rate", type=float, default=200.0, help="publishes per second")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds idle before")
    parser.add_argument("--workload", default="rooms,direct")
    parser.add_argument("--backends", default="memory,redis")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port, args.sockets, args.room, args.redis)
        return
    raise_nofile()
    log = Path("/tmp/benchmarks-rooms.log")
    rows = []
    for workload in args.workload.split(","):
        for backend in args.backends.split(","):
            rows.append(asyncio.run(run(workload, backend, args, log)))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
