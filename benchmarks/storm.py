"""Reconnect storm: N logged-in clients with presence connect at once to one process.

Side by side in one run (``--systems``, see ``chat.py``): ``raw``, an ASGI app that only accepts
(and echoes, for the latency probe); ``groups``, asgi_groups' MessagingView (signed session
cookie, user from the store, presence on); ``channels``, Django Channels (``AuthMiddlewareStack``,
database sessions and users, in-memory channel layer, presence as ``group_send`` on connect and
disconnect); ``socketio``, python-socketio (login in the connect ``auth``, ``enter_room``,
presence ``emit`` to the room). All N are in one group, every client logged in before the storm.
Reported per system: time until every client was connected (for Socket.IO: its namespace
connect acknowledged), server CPU per handshake, presence frames received in total (every client
counts what it reads), and the round-trip p50/p99 of ``--established`` clients that were
connected before the storm and keep sending to their own group during it (plus probes lost).

    python -m benchmarks.storm --n 2000 --systems raw,groups,channels,socketio
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from . import chat
from .procstat import cpu_ns

#: Probes each established client sends per second during the storm.
PROBE_RATE = 10.0
#: The storm is over when no presence frame arrived for this long (seconds; longer than
#: MessagingView.presence_max_delay, so that the last coalesced update is counted) ...
QUIET = 3.0
#: ... or at the latest this long after the last handshake.
SETTLE_MAX = 30.0
#: Seconds to wait for probe answers still in flight before counting them lost.
PROBE_GRACE = 30.0
SYSTEMS = ("raw", "groups", "channels", "socketio")
#: Also accepted: a diagnostic (asgi_groups with hellos that list no users) and Redis variants.
OTHERS = ("groups-nolist", "groups-redis", "channels-redis", "channels-pubsub", "socketio-redis")


def users(n: int, established: int) -> list[chat.Person]:
    """``u1``…``uN`` in ``hall``; the established ``e1``… in ``hall`` and ``est``."""
    storm = [chat.Person(i, f"u{i}", frozenset({"hall"})) for i in range(1, n + 1)]
    steady = [
        chat.Person(n + i, f"e{i}", frozenset({"hall", "est"})) for i in range(1, established + 1)
    ]
    return storm + steady


class Counts:
    def __init__(self) -> None:
        self.presence = 0
        self.last_presence = time.monotonic()
        self.frames = 0


async def run(system: chat.ChatSystem, n: int, established: int, log: Path) -> dict[str, Any]:
    counts = Counts()
    probes: dict[str, float] = {}
    rtts: list[float] = []
    sent = 0

    def reader(mine: dict[str, float] | None) -> Callable[[str], None]:
        """Count presence, match probe answers."""

        def on_line(line: str) -> None:
            counts.frames += 1
            if '"presence' in line:
                counts.presence += 1
                counts.last_presence = time.monotonic()
            if mine is not None and "probe:" in line:
                key = line.split("probe:", 1)[1].split('"', 1)[0]
                at = mine.pop(key, None)
                if at is not None:
                    rtts.append(time.perf_counter() - at)

        return on_line

    people = users(n, established)
    async with (
        chat.served(system, people, chat.Options(), log) as server,
        chat.Clients(server) as clients,
    ):
        dialect = clients.dialect
        steady = [await clients.open(n + i, reader(probes)) for i in range(1, established + 1)]
        await asyncio.sleep(1.0)
        stop = asyncio.Event()

        async def probe(ws: Any, i: int) -> None:
            nonlocal sent
            k = 0
            while not stop.is_set():
                key = f"{i}.{k}"
                k += 1
                probes[key] = time.perf_counter()
                sent += 1
                try:
                    await ws.send(dialect.group("est", f"probe:{key}"))
                except Exception:
                    return
                await asyncio.sleep(1 / PROBE_RATE)

        probing = [asyncio.create_task(probe(ws, i)) for i, ws in enumerate(steady)]
        await asyncio.sleep(0.5)
        rtts.clear()  # only what the storm does counts
        base_presence = counts.presence
        cpu0, t0 = cpu_ns(server.proc.pid), time.perf_counter()
        results = await asyncio.gather(
            *(clients.open(i, reader(None)) for i in range(1, n + 1)), return_exceptions=True
        )
        t_all = time.perf_counter() - t0
        failed = sum(isinstance(r, BaseException) for r in results)
        settle_until = time.monotonic() + SETTLE_MAX
        while time.monotonic() < settle_until:
            await asyncio.sleep(0.2)
            if time.monotonic() - counts.last_presence >= QUIET:
                break
        cpu = cpu_ns(server.proc.pid) - cpu0
        stop.set()
        await asyncio.gather(*probing)
        for _ in range(int(PROBE_GRACE * 10)):
            if not probes:
                break
            await asyncio.sleep(0.1)
        ordered = sorted(rtts)
        return {
            "system": system.name,
            "n": n,
            "connected": n - failed,
            "time_to_all_s": round(t_all, 3),
            "cpu_per_handshake_us": round(cpu / 1000 / max(1, n - failed), 1),
            "presence_frames": counts.presence - base_presence,
            "probe_p50_ms": round(chat.percentile_ms(ordered, 0.5), 1),
            "probe_p99_ms": round(chat.percentile_ms(ordered, 0.99), 1),
            "probes": sent,
            "probes_lost": len(probes),
        }


def table(rows: list[dict[str, Any]]) -> str:
    raw = next((r for r in rows if r["system"] == "raw" and "error" not in r), None)
    lines = [
        "| system | connected | time to all (s) | vs raw | CPU/handshake (µs) | presence frames "
        "| per connect | established p50 / p99 (ms) | probes lost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | {r['error']} |" + " |" * 7)
            continue
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
    parser.add_argument("--n", type=int, default=2000, help="clients in the storm")
    parser.add_argument("--established", type=int, default=20, help="clients probing meanwhile")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    log = Path("/tmp/benchmarks-storm.log")
    rows = chat.run_rows(
        [
            (system, {"n": args.n}, partial(run, system, args.n, args.established, log))
            for system in chat.choose(args.systems, SYSTEMS + OTHERS)
        ],
        args.json,
    )
    print(table(rows))


if __name__ == "__main__":
    main()
