"""Flood a ``tests.support.probe_app`` server from a process of its own.

``python -m tests.support.flooder [--hold] [--min-bytes N] ADDRESS SECONDS USER [USER ...]``
opens one
abusive connection per user, writes pre-built chat frames (direct messages to oneself, ~1 KiB
each) as fast as the socket takes them, reads until the server closes, and reconnects to do it
again until SECONDS have passed (with ``--hold``: and until its stdin is closed, so the caller
decides when the flood ends; with ``--min-bytes``: and until N bytes were sent, however slow
the machine). It prints one JSON report: rounds, bytes and frames sent, and per
connection the close code, the ``rate_limited`` refusals, the messages accepted and how long
it stayed open.

A separate process, so that the clients measuring the server's responsiveness do not share an
event loop (or a CPU's time slice) with the attacker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field

from .hostile import FloodClient, chat, masked_frames

#: Frames in one pre-built burst; a flooder writes bursts back to back.
BURST = 500
TEXT = "f" * 1000


@dataclass
class FloodReport:
    rounds: int = 0
    bytes_sent: int = 0
    frames_sent: int = 0
    codes: list[int | None] = field(default_factory=list)
    refusals: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    #: Seconds each connection stayed open (a token bucket refills meanwhile).
    open_for: list[float] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


async def flood_once(address: str, user: int, blob: bytes, report: FloodReport) -> None:
    """One abusive connection: write ``blob`` over and over, read until the server closes."""
    client = FloodClient(address, origin=f"http://{address}", cookie=f"session={user}")
    opened = time.monotonic()
    await client.connect()
    stop = asyncio.Event()
    sender = asyncio.create_task(client.flood(blob, stop))
    try:
        frames = await client.read_until_close()
    finally:
        stop.set()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        client.close()
    report.open_for.append(time.monotonic() - opened)
    bodies = [json.loads(f.data) for f in frames]
    report.rounds += 1
    report.bytes_sent += client.sent
    report.frames_sent += client.sent * BURST // len(blob)
    report.codes.append(client.close_code)
    report.refusals.append(sum(1 for b in bodies if b.get("error") == "rate_limited"))
    report.accepted.append(sum(1 for b in bodies if b["type"] == "direct"))
    report.unexpected.extend(
        json.dumps(b)[:200] for b in bodies if b["type"] not in ("hello", "direct", "error")
    )


async def stdin_closed() -> None:
    """Return once this process's stdin reaches end of file."""
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def flood(
    address: str, seconds: float, users: list[int], hold: bool = False, min_bytes: int = 0
) -> FloodReport:
    report = FloodReport()
    until = time.monotonic() + seconds
    released = asyncio.ensure_future(stdin_closed()) if hold else None

    def going_on() -> bool:
        held = released is not None and not released.done()
        return time.monotonic() < until or held or report.bytes_sent < min_bytes

    async def one(user: int) -> None:
        blob = masked_frames([chat("Direct", TEXT, user_name=f"user{user}")] * BURST)
        while going_on():
            await flood_once(address, user, blob, report)

    await asyncio.gather(*(one(user) for user in users))
    return report


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.flooder")
    parser.add_argument("--hold", action="store_true", help="also flood until stdin closes")
    parser.add_argument("--min-bytes", type=int, default=0, help="also flood until N bytes")
    parser.add_argument("address")
    parser.add_argument("seconds", type=float)
    parser.add_argument("users", type=int, nargs="+")
    args = parser.parse_args(argv)
    report = asyncio.run(flood(args.address, args.seconds, args.users, args.hold, args.min_bytes))
    print(json.dumps(asdict(report)))


if __name__ == "__main__":
    main(sys.argv[1:])
