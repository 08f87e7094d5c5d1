"""Counting what the client receives: logical deliveries, arrival times and latencies.

Shared by every client connection of one load generator. The per-frame work is a few
attribute updates, so the client stays far cheaper per delivery than any server under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array

monotonic_ns = time.monotonic_ns


class Tally:
    """Deliveries since the last :meth:`reset`, and (optionally) their latencies in ns.

    ``split``: a frame may carry several messages separated by ``"\\n"`` (coalescing mode);
    each counts as one logical delivery.
    """

    __slots__ = ("done", "expected", "frames", "last_ns", "latencies", "plain", "received", "split")

    def __init__(self, split: bool = False) -> None:
        self.split = split
        self.received = 0
        self.frames = 0
        self.expected = 0
        self.last_ns = 0
        self.latencies: array[int] | None = None
        self.plain = not split
        self.done = asyncio.Event()

    def reset(self, expected: int, *, latency: bool = False) -> None:
        self.received = 0
        self.frames = 0
        self.expected = expected
        self.last_ns = 0
        self.latencies = array("q") if latency else None
        #: Nothing to look at in the payload: each frame is one delivery (client fast path).
        self.plain = not (latency or self.split)
        self.done.clear()

    def add(self, payload: bytes) -> None:
        """Count one received frame whose application payload is ``payload``."""
        now = monotonic_ns()
        self.frames += 1
        self.last_ns = now
        if self.split and b"\n" in payload:
            lines = payload.split(b"\n")
            self.received += len(lines)
            if self.latencies is not None:
                for line in lines:
                    self.latencies.append(now - int(line[: line.index(b" ")]))
        else:
            self.received += 1
            if self.latencies is not None:
                self.latencies.append(now - int(payload[: payload.index(b" ")]))
        if self.received >= self.expected:
            self.done.set()

    async def wait(self, deadline_s: float, idle_s: float) -> bool:
        """Until everything expected arrived (True), or ``idle_s`` without a frame, or deadline."""
        start = time.monotonic()
        while not self.done.is_set():
            now = time.monotonic()
            last = self.last_ns / 1e9 if self.last_ns else start
            if now - start >= deadline_s or now - max(start, last) >= idle_s:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), 0.05)
        return True

    async def quiet(self, gap_s: float = 0.1, limit_s: float = 5.0) -> None:
        """Wait until no frame has arrived for ``gap_s`` (stragglers of an earlier phase)."""
        give_up = time.monotonic() + limit_s
        while time.monotonic() < give_up:
            if not self.last_ns or monotonic_ns() - self.last_ns >= gap_s * 1e9:
                return
            await asyncio.sleep(gap_s / 2)


def percentiles(samples: array[int], points: tuple[float, ...]) -> dict[str, float]:
    """``{"p50": ms, …, "max": ms}`` of latency samples in ns (empty dict without samples)."""
    if not samples:
        return {}
    ordered = sorted(samples)
    last = len(ordered) - 1
    out = {f"p{q * 100:g}": ordered[min(last, int(q * len(ordered)))] / 1e6 for q in points}
    out["max"] = ordered[last] / 1e6
    return out
