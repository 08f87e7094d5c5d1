"""Fan-out benchmark: ``python -m benchmarks.fanout [--quick] [--systems a,b] [--workloads w,...]
[--out FILE]``.

Runs every selected system under the same ASGI server, each in its own process with the client
load in another, writes RESULTS.md (tables, targets met/missed) and fanout.png. Installs
nothing: a system whose packages are missing is reported as skipped. See README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from . import meta, report
from .plan import FULL, QUICK, Plan
from .plot import plot
from .procs import kill_all
from .results import SystemResult
from .serve import DEFAULT_WS
from .systems import select, unavailable
from .targets import evaluate
from .workloads import WORKLOADS, run_system

HERE = Path(__file__).resolve().parent
#: Seconds kept in reserve for each system still to run when the run budget gets tight.
MIN_SHARE = 15.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fanout", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, about 2 minutes")
    p.add_argument("--systems", help="comma-separated names (default: all); see README.md")
    p.add_argument("--coalesce", action="store_true", help="also run asgi_groups-coalesce")
    p.add_argument(
        "--workloads",
        type=_workloads,
        default=frozenset(WORKLOADS),
        help=f"comma-separated, from {','.join(WORKLOADS)} (default: all)",
    )
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="markdown report")
    p.add_argument("--plot", type=Path, help="PNG path (default: fanout.png next to --out)")
    p.add_argument("--json", type=Path, help="also dump the raw results as JSON")
    p.add_argument("--ws", default=DEFAULT_WS, help="uvicorn WebSocket implementation")
    p.add_argument("--redis-server", default="redis-server", help="redis-server binary")
    return p.parse_args(argv)


def _workloads(text: str) -> frozenset[str]:
    names = frozenset(w.strip() for w in text.split(",") if w.strip())
    unknown = names - set(WORKLOADS)
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(WORKLOADS)}")
    return names


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def time_limit(plan: Plan, deadline: float, systems_left: int) -> float:
    """A system's share: its own cap, or what the run budget leaves after the others' minimum."""
    reserve = MIN_SHARE * (systems_left - 1)
    return max(MIN_SHARE, min(plan.system_limit, deadline - time.monotonic() - reserve))


async def run_all(args: argparse.Namespace, plan: Plan, workdir: Path) -> dict[str, SystemResult]:
    results: dict[str, SystemResult] = {}
    systems = select(args.systems, coalesce=args.coalesce)
    deadline = time.monotonic() + plan.run_budget
    for index, system in enumerate(systems):
        result = results[system.name] = SystemResult(system.name, system.label, system.family)
        reason = unavailable(system, args.redis_server)
        if reason is not None:
            result.skipped = reason
            log(f"{system.name}: skipped ({reason})")
            continue
        log(f"{system.name}: {system.label}")
        work = run_system(
            result,
            system,
            plan,
            workdir,
            log,
            ws=args.ws,
            redis_bin=args.redis_server,
            workloads=args.workloads,
        )
        limit = time_limit(plan, deadline, len(systems) - index)
        try:
            await asyncio.wait_for(work, limit)
        except TimeoutError:
            result.errors["time limit"] = f"stopped after {limit:.0f}s; later workloads not run"
            log(f"  stopped: over its {limit:.0f}s share of the run's time")
    return results


def _terminate(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored
        signal.signal(signum, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="asgi-groups-fanout-"))
    machine = meta.machine()
    started = time.monotonic()
    log(f"{'quick' if plan.quick else 'full'} run; logs in {workdir}")
    try:
        results = asyncio.run(run_all(args, plan, workdir))
    except KeyboardInterrupt:
        log("interrupted: every child process was stopped; nothing written")
        return 130
    finally:
        kill_all()
    seconds = time.monotonic() - started
    items = evaluate(results, plan.burst_ns)
    command = " ".join(["python -m benchmarks.fanout", *(argv or sys.argv[1:])])
    text = report.render(
        results,
        plan,
        items,
        when=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=command,
        machine=machine,
        versions=meta.versions(args.redis_server),
        settings={
            "server": f"uvicorn, 1 worker, uvloop, httptools, ws={args.ws}, pings off",
            "client": "picows (separate process); slow reader: raw socket, SO_RCVBUF 1 KiB",
        },
        seconds=seconds,
    )
    args.out.write_text(text)
    png = args.plot or args.out.with_name("fanout.png")
    plotted = plot(results, plan.burst_ns, png)
    if args.json:
        args.json.write_text(json.dumps({k: dataclasses.asdict(v) for k, v in results.items()}))
    print(report.summary(results, plan))
    print()
    print(report.targets(items))
    log(f"wrote {args.out}" + (f" and {png}" if plotted else "") + f" in {seconds:.0f}s")
    if any(r.errors or any("failed" in n for n in r.notes) for r in results.values()):
        log(f"some workloads failed; the logs are in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
