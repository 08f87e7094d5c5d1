"""Many small rooms and direct messages: where the per-publish cost (decode, route, backend,
listener) dominates, not the per-socket write.

Each system (``--systems``, see ``chat.py``) runs a chat server with ``--sockets`` logged-in
users in rooms of ``--room`` each, presence off: asgi_groups' MessagingView (memory, Redis),
Django Channels (``AuthMiddlewareStack``, database sessions and users; ``InMemoryChannelLayer``,
``RedisChannelLayer``, ``RedisPubSubChannelLayer``) and python-socketio (default manager,
``AsyncRedisManager``); the harness starts a redis-server for each Redis variant. ``raw-chat``
is the floor under all of them: the least an ASGI app does for the same messages on the same
server (a plain cookie, rooms in a dict, one ``send`` per recipient), so that each system's
cost above it is the library's own. For ``--rate``
s⁻¹ over ``--seconds``, random users send a Group message to their room (``rooms``) or a Direct
message to a random other user (``direct``: Channels and Socket.IO send it to a per-user group
or room). Reported per system, side by side in one run: server CPU per publish (and Redis's
own), the latency from send to the last recipient's frame, p50/p99, and messages lost.

    python -m benchmarks.rooms --sockets 1000 --workload rooms,direct
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

from . import chat
from .procstat import cpu_ns

#: Seconds to wait for the last frames after the last send.
DRAIN = 2.0
SYSTEMS = (
    "raw-chat",
    "groups",
    "groups-redis",
    "channels",
    "channels-redis",
    "channels-pubsub",
    "socketio",
    "socketio-redis",
)


def people(sockets: int, room: int) -> list[chat.Person]:
    return [
        chat.Person(i, f"u{i}", frozenset({f"r{(i - 1) // room}"})) for i in range(1, sockets + 1)
    ]


async def run(
    workload: str, system: chat.ChatSystem, args: argparse.Namespace, log: Path
) -> dict[str, Any]:
    sockets, room = args.sockets, args.room
    dialect = chat.DIALECTS[system.dialect]
    expected: dict[str, tuple[float, int]] = {}  # id -> (sent at, recipients left)
    latencies: list[float] = []
    drained = asyncio.Event()  # set when every message sent so far has arrived

    def on_line(line: str) -> None:
        if '"m:' not in line:
            return
        key = dialect.text(line)[2:]
        entry = expected.get(key)
        if entry is None:
            return
        sent, left = entry
        if left <= 1:
            del expected[key]
            latencies.append(time.perf_counter() - sent)
            if not expected:
                drained.set()
        else:
            expected[key] = (sent, left - 1)

    # steady traffic only: the storm measures presence
    options = chat.Options(presence=False, echo=False)
    async with (
        chat.served(
            system, people(sockets, room), options, log, compress=args.compression == "on"
        ) as server,
        chat.Clients(server) as clients,
    ):
        batch = system.connect_batch
        for start in range(0, sockets, batch):
            ids = range(start + 1, min(sockets, start + batch) + 1)
            await asyncio.gather(*(clients.open(i, on_line) for i in ids))
        await asyncio.sleep(args.warmup)
        rng = random.Random(7)
        total = int(args.rate * args.seconds)
        cpu0 = {name: cpu_ns(pid) for name, pid in server.pids.items()}
        t0 = time.perf_counter()
        for k in range(total):
            sender = rng.randrange(sockets)
            key = str(k)
            if workload == "rooms":
                members = min(room, sockets - (sender // room) * room)
                body = dialect.group(f"r{sender // room}", f"m:{key}")
            else:
                target = rng.randrange(sockets - 1)
                target += target >= sender
                members = 1
                body = dialect.direct(f"u{target + 1}", f"m:{key}")
            expected[key] = (time.perf_counter(), members)
            await clients.socks[sender + 1].send(body)  # user ids start at 1
            delay = t0 + (k + 1) / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        if expected:
            drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), DRAIN)
        cpu = {name: cpu_ns(pid) - cpu0[name] for name, pid in server.pids.items()}
        ordered = sorted(latencies)
        return {
            "workload": workload,
            "system": system.name,
            "sockets": sockets,
            "room": room if workload == "rooms" else None,
            "publishes": total,
            "rate": args.rate,
            "server_cpu_per_publish_us": round(cpu["server"] / 1000 / total, 1),
            "redis_cpu_per_publish_us": round(cpu.get("redis", 0) / 1000 / total, 1),
            "p50_ms": round(chat.percentile_ms(ordered, 0.5), 2),
            "p99_ms": round(chat.percentile_ms(ordered, 0.99), 2),
            "lost": len(expected),
            "compression": args.compression,
        }


def merge(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per workload and system: the median of its rounds (lost: the sum), with the
    spread of the server's CPU per publish; a system that failed every round keeps its error."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["workload"], r["system"]), []).append(r)
    merged = []
    for runs in by.values():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            merged.append(runs[0])
            continue
        row = dict(ok[0])
        for key in ("server_cpu_per_publish_us", "redis_cpu_per_publish_us", "p50_ms", "p99_ms"):
            row[key] = statistics.median(r[key] for r in ok)
        cpus = [r["server_cpu_per_publish_us"] for r in ok]
        row.update(rounds=len(ok), cpu_min=min(cpus), cpu_max=max(cpus))
        row["lost"] = sum(r["lost"] for r in ok)
        row["publishes"] = sum(r["publishes"] for r in ok)
        merged.append(row)
    return merged


def table(rows: list[dict[str, Any]]) -> str:
    """Each system's CPU per publish (the median of its rounds), against asgi_groups (memory)
    in all and above ``raw-chat``: the floor every ASGI system pays on this server (reading the
    frame, one send per recipient), so that what is left is the library's own cost."""
    rows = merge(rows)
    lines = [
        "| workload | system | sockets | publishes | server CPU/publish (µs; rounds' range) "
        "| vs asgi_groups (memory) | above the floor (µs) | vs asgi_groups above the floor "
        "| Redis CPU/publish (µs) | p50 / p99 (ms) | lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ok = [r for r in rows if "error" not in r]
    base = {r["workload"]: r for r in ok if r["system"] == "groups"}
    floor = {r["workload"]: r for r in ok if r["system"] == "raw-chat"}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['system']} | {r['error']} |" + " |" * 8)
            continue
        cpu = r["server_cpu_per_publish_us"]
        shown = f"{cpu:.0f}"
        if r.get("rounds", 1) > 1:
            shown += f" ({r['cpu_min']:.0f} to {r['cpu_max']:.0f})"
        ours, raw = base.get(r["workload"]), floor.get(r["workload"])
        ratio = f"{cpu / ours['server_cpu_per_publish_us']:.2f}x" if ours else "-"
        above = above_ratio = "-"
        if raw is not None:
            extra = cpu - raw["server_cpu_per_publish_us"]
            above = f"{extra:.0f}"
            if ours is not None and r is not raw:
                our_extra = ours["server_cpu_per_publish_us"] - raw["server_cpu_per_publish_us"]
                above_ratio = f"{extra / our_extra:.1f}x" if our_extra > 0 else "-"
        redis_cpu = r["redis_cpu_per_publish_us"] if chat.SYSTEMS[r["system"]].redis else "-"
        lines.append(
            f"| {r['workload']} | {r['system']} | {r['sockets']} | {r['publishes']} "
            f"| {shown} | {ratio} | {above} | {above_ratio} | {redis_cpu} "
            f"| {r['p50_ms']} / {r['p99_ms']} | {r['lost']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--room", type=int, default=5, help="members per room")
    parser.add_argument("--rate", type=float, default=200.0, help="publishes per second")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds idle before")
    parser.add_argument("--workload", default="rooms,direct")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    parser.add_argument(
        "--compression",
        choices=("on", "off"),
        default="on",
        help="clients offer permessage-deflate (on, as browsers do) or not (off: as with "
        "asgi_groups.servers.uvicorn_options())",
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of each system, interleaved")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    log = Path("/tmp/benchmarks-rooms.log")
    jobs = [
        (system, {"workload": workload, "round": k}, partial(run, workload, system, args, log))
        for k in range(args.rounds)
        for workload in args.workload.split(",")
        for system in chat.choose(args.systems, SYSTEMS)
    ]
    print(table(chat.run_rows(jobs, args.json)))


if __name__ == "__main__":
    main()
