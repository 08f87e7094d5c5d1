"""Reconnect storm: N logged-in clients with presence connect at once to one process.

Side by side in one run: a raw ASGI app that only accepts (and echoes, for the latency probe)
and asgi_groups' MessagingView (signed session cookie, user from the store, presence on, all N
in one group). Reported per system: time until every handshake completed, server CPU per
handshake, presence frames received in total (every client counts what it reads), and the
round-trip p50/p99 of ``--established`` clients that were connected before the storm and keep
sending during it (plus probes lost).

    python -m benchmarks.storm --n 2000
    python -m benchmarks.storm serve groups --port 9000 --n 2000   (the server side, spawned)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from .limits import raise_nofile
from .procs import free_port, kill, python, spawn, wait_for_port
from .procstat import cpu_ns

SECRET = "storm-benchmark-secret"
#: Probes each established client sends per second during the storm.
PROBE_RATE = 10.0
#: The storm is over when no presence frame arrived for this long (seconds; longer than
#: MessagingView.presence_max_delay, so that the last coalesced update is counted) ...
QUIET = 3.0
#: ... or at the latest this long after the last handshake.
SETTLE_MAX = 30.0
#: Seconds to wait for probe answers still in flight before counting them lost.
PROBE_GRACE = 30.0
SYSTEMS = ("raw", "groups")
#: Diagnostic: asgi_groups with hellos that list no users (``--systems raw,groups,groups-nolist``).
DIAGNOSTIC = ("groups-nolist",)


# -- the servers -------------------------------------------------------------------------------


def raw_app() -> Any:
    """Accept every socket; echo text frames (the probes); nothing else."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        while True:
            event = await receive()
            kind = event["type"]
            if kind == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif kind == "websocket.receive" and event.get("text") is not None:
                await send({"type": "websocket.send", "text": event["text"]})
            elif kind == "websocket.disconnect":
                return

    return app


def users(n: int, established: int) -> list[Any]:
    from asgi_groups import SimpleUser

    storm = [SimpleUser(i, f"u{i}", frozenset({"hall"})) for i in range(1, n + 1)]
    steady = [
        SimpleUser(n + i, f"e{i}", frozenset({"hall", "est"})) for i in range(1, established + 1)
    ]
    return storm + steady


def groups_app(n: int, established: int, user_list: bool = True) -> Any:
    """MessagingView as an app would deploy it: signed cookie, user store, presence on.

    ``user_list=False`` (diagnostic): the hello lists no users, to see what listing every user
    in every hello costs."""
    from asgi_groups import GroupsMiddleware, InMemoryUsers, Registry
    from asgi_groups.messaging import MessagingView, StaticDirectory
    from asgi_groups.sessions import SignedCookie

    people = users(n, established)

    class NoList(StaticDirectory):
        async def listing(self) -> tuple[list[str], list[str]]:
            return (await super().listing())[0], []

    class Chat(MessagingView):
        rate_limit = None
        user_rate_limit = None

    registry = Registry()
    directory = StaticDirectory(people) if user_list else NoList(people)
    endpoint = Chat.as_asgi(directory=directory)
    return GroupsMiddleware(
        endpoint, registry, sessions=SignedCookie(SECRET), users=InMemoryUsers(people)
    )


def serve(system: str, port: int, n: int, established: int) -> None:
    from .serve import run_asgi

    raise_nofile()
    app = raw_app() if system == "raw" else groups_app(n, established, system != "groups-nolist")
    run_asgi(app, "127.0.0.1", port, "websockets-sansio")


# -- the clients -------------------------------------------------------------------------------


class Counts:
    def __init__(self) -> None:
        self.presence = 0
        self.last_presence = time.monotonic()
        self.frames = 0


def cookie_for(user_id: int) -> str:
    from asgi_groups.sessions import SignedCookie

    return "asgi_groups_session=" + SignedCookie(SECRET).encode({"user_id": str(user_id)})


async def reader(
    ws: Any, counts: Counts, probes: dict[str, float] | None, rtts: list[float]
) -> None:
    """Read every frame: count presence, match probe answers."""
    try:
        async for data in ws:
            counts.frames += 1
            for line in str(data).split("\n"):
                if '"presence' in line:
                    counts.presence += 1
                    counts.last_presence = time.monotonic()
                if probes is not None and "probe:" in line:
                    key = line.split("probe:", 1)[1].split('"', 1)[0]
                    sent = probes.pop(key, None)
                    if sent is not None:
                        rtts.append(time.perf_counter() - sent)
    except Exception:
        return


async def run(system: str, n: int, established: int, log: Path) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    port = free_port()
    proc = spawn(
        python(
            "benchmarks.storm",
            "serve",
            system,
            "--port",
            str(port),
            "--n",
            str(n),
            "--established",
            str(established),
        ),
        log,
    )
    url, origin = f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}"
    counts = Counts()
    socks: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    probes: dict[str, float] = {}
    rtts: list[float] = []
    sent = 0
    try:
        await wait_for_port(port, proc)

        async def open_one(user_id: int, mine: dict[str, float] | None = None) -> Any:
            ws = await connect(
                url,
                origin=origin,  # type: ignore[arg-type]
                additional_headers={"Cookie": cookie_for(user_id)},
                open_timeout=120,
                ping_interval=None,
                max_queue=None,
            )
            socks.append(ws)
            tasks.append(asyncio.create_task(reader(ws, counts, mine, rtts)))
            return ws

        steady = [await open_one(n + i, probes) for i in range(1, established + 1)]
        await asyncio.sleep(1.0)
        stop = asyncio.Event()

        async def probe(ws: Any, i: int) -> None:
            nonlocal sent
            k = 0
            while not stop.is_set():
                key = f"{i}.{k}"
                k += 1
                text = f"probe:{key}"
                body = (
                    text
                    if system == "raw"
                    else json.dumps({"type": "Group", "group": "est", "text": text})
                )
                probes[key] = time.perf_counter()
                sent += 1
                try:
                    await ws.send(body)
                except Exception:
                    return
                await asyncio.sleep(1 / PROBE_RATE)

        probing = [asyncio.create_task(probe(ws, i)) for i, ws in enumerate(steady)]
        await asyncio.sleep(0.5)
        rtts.clear()  # only what the storm does counts
        base_presence = counts.presence
        cpu0, t0 = cpu_ns(proc.pid), time.perf_counter()
        results = await asyncio.gather(
            *(open_one(i) for i in range(1, n + 1)), return_exceptions=True
        )
        t_all = time.perf_counter() - t0
        failed = sum(isinstance(r, BaseException) for r in results)
        settle_until = time.monotonic() + SETTLE_MAX
        while time.monotonic() < settle_until:
            await asyncio.sleep(0.2)
            if time.monotonic() - counts.last_presence >= QUIET:
                break
        cpu = cpu_ns(proc.pid) - cpu0
        stop.set()
        await asyncio.gather(*probing)
        for _ in range(int(PROBE_GRACE * 10)):
            if not probes:
                break
            await asyncio.sleep(0.1)
        lost = len(probes)
        ordered = sorted(rtts)

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else 0

        return {
            "system": system,
            "n": n,
            "connected": n - failed,
            "time_to_all_s": round(t_all, 3),
            "cpu_per_handshake_us": round(cpu / 1000 / max(1, n - failed), 1),
            "presence_frames": counts.presence - base_presence,
            "probe_p50_ms": round(pct(0.5), 1),
            "probe_p99_ms": round(pct(0.99), 1),
            "probes": sent,
            "probes_lost": lost,
        }
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in socks), return_exceptions=True)
        kill(proc)


def table(rows: list[dict[str, Any]]) -> str:
    raw = next((r for r in rows if r["system"] == "raw"), None)
    lines = [
        "| system | connected | time to all (s) | vs raw | CPU/handshake (µs) | presence frames "
        "| per connect | established p50 / p99 (ms) | probes lost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['time_to_all_s'] / raw['time_to_all_s']:.2f}x" if raw else "-"
        lines.append(
            f"| {r['system']} | {r['connected']}/{r['n']} | {r['time_to_all_s']} | {ratio} "
            f"| {r['cpu_per_handshake_us']} | {r['presence_frames']} "
            f"| {r['presence_frames'] / max(1, r['n']):.2f} "
            f"| {r['probe_p50_ms']} / {r['probe_p99_ms']} | {r['probes_lost']}/{r['probes']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command")
    srv = sub.add_parser("serve")
    srv.add_argument("system", choices=SYSTEMS + DIAGNOSTIC)
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--n", type=int, default=2000)
    srv.add_argument("--established", type=int, default=20)
    parser.add_argument("--n", type=int, default=2000, help="clients in the storm")
    parser.add_argument("--established", type=int, default=20, help="clients probing meanwhile")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.system, args.port, args.n, args.established)
        return
    raise_nofile()
    log = Path("/tmp/benchmarks-storm.log")
    rows = []
    for system in args.systems.split(","):
        rows.append(asyncio.run(run(system, args.n, args.established, log)))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
