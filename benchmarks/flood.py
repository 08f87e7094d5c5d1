"""A bystander's round trip with and without a flooder on the same server, side by side.

    python -m benchmarks.flood                 # 200 round trips each way
    python -m benchmarks.flood --samples 500 --flooders 2

The server is ``tests.support.probe_app`` (the messaging view with the library's default abuse
limits) under uvicorn in a process of its own; the flooder is ``tests.support.flooder`` in
another (one abusive connection per flooding user, writing ~1 KiB chat frames as fast as the
socket takes them, reconnecting each time the server closes it with 4429). The bystander, in
this process, sends a direct message to itself every 50 ms (within the rate limit) and times
until it comes back. It prints p50 / p95 / max of that round trip, quiet and under flood.

The test suite asserts what holds on any machine (the bystander gets every message, in order;
the flooder is refused; memory stays bounded: tests/test_hostile_flood.py); how fast is a
figure of the machine, so it is measured here. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from tests.support.servers import serve_process

ROOT = Path(__file__).resolve().parents[1]
#: The bystander's pace: 20 messages/s, the default rate limit.
INTERVAL = 0.05
USER = 2


async def round_trip(ws: ClientConnection, n: int) -> float:
    """Seconds for a direct message to oneself to come back."""
    text = f"ping {n}"
    started = time.perf_counter()
    await ws.send(json.dumps({"type": "Direct", "text": text, "user_name": f"user{USER}"}))
    async with asyncio.timeout(30):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "direct" and frame.get("text") == text:
                return time.perf_counter() - started
            if frame["type"] == "error":
                raise RuntimeError(f"the bystander was refused: {frame}")


async def sample(ws: ClientConnection, count: int) -> list[float]:
    samples = []
    for n in range(count):
        rtt = await round_trip(ws, n)
        samples.append(rtt)
        await asyncio.sleep(max(0.0, INTERVAL - rtt))
    return samples


async def start_flooder(address: str, users: list[int]) -> asyncio.subprocess.Process:
    """The flooder, held until its stdin closes."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.flooder",
        "--hold",
        address,
        "0",
        *map(str, users),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


async def run(address: str, samples: int, flooders: int) -> tuple[list[float], list[float], str]:
    async with connect(
        f"ws://{address}/ws",
        origin=f"http://{address}",  # type: ignore[arg-type]
        additional_headers={"Cookie": f"session={USER}"},
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        await sample(ws, 20)  # warm up
        quiet = await sample(ws, samples)
        proc = await start_flooder(address, [100 + i for i in range(flooders)])
        await asyncio.sleep(0.2)  # let the flood get going
        loaded = await sample(ws, samples)
        assert proc.stdin is not None
        proc.stdin.close()
        out, _ = await proc.communicate()
    report = json.loads(out)
    summary = (
        f"flood: {report['rounds']} connections closed with {sorted(set(report['codes']))}, "
        f"{report['frames_sent']} frames, {report['bytes_sent'] / 2**20:.0f} MiB"
    )
    return quiet, loaded, summary


def figures(samples: list[float]) -> tuple[float, float, float]:
    """p50, p95 and max, in milliseconds."""
    p95 = statistics.quantiles(samples, n=20, method="inclusive")[-1]
    return statistics.median(samples) * 1e3, p95 * 1e3, max(samples) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flood", description=__doc__)
    parser.add_argument("--samples", type=int, default=200, help="round trips each way")
    parser.add_argument("--flooders", type=int, default=1, help="flooding users")
    args = parser.parse_args(argv)
    env = {"PROBE_PRESENCE": "0"}
    with serve_process("tests.support.probe_app:app", env=env) as (address, _proc):
        quiet, loaded, summary = asyncio.run(run(address, args.samples, args.flooders))
    print(f"bystander round trip, {args.samples} samples each, one every {INTERVAL * 1e3:.0f} ms")
    print(f"{'':14}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    for name, values in (("quiet", quiet), ("under flood", loaded)):
        p50, p95, most = figures(values)
        print(f"{name:14}{p50:9.2f}{p95:9.2f}{most:9.2f}")
    print(summary)


if __name__ == "__main__":
    main()
