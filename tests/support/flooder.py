"""Flood a ``tests.support.probe_app`` server from a process of its own.

``python -m tests.support.flooder ADDRESS SECONDS USER [USER ...]`` opens one abusive
connection per user, writes pre-built chat frames (direct messages to oneself, ~1 KiB each)
as fast as the socket takes them, reads until the server closes, and reconnects to do it
again until SECONDS have passed. It prints one JSON report: rounds, bytes and frames sent, and
per connection the close code, the ``rate_limited`` refusals and the messages accepted.

A separate process, so that the clients measuring the server's responsiveness do not share an
event loop (or a CPU's time slice) with the attacker.
"""

from __future__ import annotations

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
    unexpected: list[str] = field(default_factory=list)


async def flood_once(address: str, user: int, blob: bytes, report: FloodReport) -> None:
    """One abusive connection: write ``blob`` over and over, read until the server closes."""
    client = FloodClient(address, origin=f"http://{address}", cookie=f"session={user}")
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


async def flood(address: str, seconds: float, users: list[int]) -> FloodReport:
    report = FloodReport()
    until = time.monotonic() + seconds

    async def one(user: int) -> None:
        blob = masked_frames([chat("Direct", TEXT, user_name=f"user{user}")] * BURST)
        while time.monotonic() < until:
            await flood_once(address, user, blob, report)

    await asyncio.gather(*(one(user) for user in users))
    return report


def main(argv: list[str]) -> None:
    address, seconds, *users = argv
    report = asyncio.run(flood(address, float(seconds), [int(u) for u in users]))
    print(json.dumps(asdict(report)))


if __name__ == "__main__":
    main(sys.argv[1:])
