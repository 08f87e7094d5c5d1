"""Fan-out benchmark: ``python -m benchmarks.fanout [--quick] [--systems a,b] [--workloads w,...]
[--servers s,...] [--out FILE]``.

Runs every selected system under the same ASGI server, each in its own process with the client
load in another, writes RESULTS.md (tables, targets met/missed) and fanout.png. With
``--servers``, the burst workload of the raw ASGI loop and asgi_groups also runs under each
named server (the "Servers" table). Installs nothing: a system whose packages are missing is
reported as skipped. See README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.metadata
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
from .systems import SERVERS, System, matrix, parse_servers, select, unavailable
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
    p.add_argument(
        "--servers",
        type=_servers,
        default=(),
        help=f"also burst raw-asgi and asgi_groups under each of these ASGI servers, from "
        f"{','.join(SERVERS)} (or all); adds the native limit to --systems",
    )
    return p.parse_args(argv)


def _servers(text: str) -> tuple[str, ...]:
    try:
        return parse_servers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


Results = dict[str, SystemResult]


async def run_all(args: argparse.Namespace, plan: Plan, workdir: Path) -> tuple[Results, Results]:
    """The selected systems, then the server matrix (empty without ``--servers``)."""
    systems = select(args.systems, coalesce=args.coalesce)
    if args.servers and all(s.name != "native" for s in systems):
        systems.insert(0, select("native")[0])  # the Servers table is relative to it
    results = await run_systems(args, plan, workdir, systems, args.workloads, plan.run_budget)
    variants = matrix(args.servers, coalesce=args.coalesce)
    budget = len(variants) * plan.system_limit / 2
    servers = await run_systems(args, plan, workdir, variants, frozenset({"burst"}), budget)
    return results, servers


async def run_systems(
    args: argparse.Namespace,
    plan: Plan,
    workdir: Path,
    systems: list[System],
    workloads: frozenset[str],
    budget: float,
) -> Results:
    """``workloads`` of each system in turn, within ``budget`` seconds shared out among them."""
    results: Results = {}
    deadline = time.monotonic() + budget
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
            workloads=workloads,
        )
        limit = time_limit(plan, deadline, len(systems) - index)
        try:
            await asyncio.wait_for(work, limit)
        except TimeoutError:
            result.errors["time limit"] = f"stopped after {limit:.0f}s; later workloads not run"
            log(f"  stopped: over its {limit:.0f}s share of the run's time")
    return results


def server_versions() -> dict[str, str]:
    """Versions of the servers ``--servers`` adds to the ones ``meta`` reports."""
    out = {}
    for name in ("wsproto", "hypercorn", "granian"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


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
        results, servers = asyncio.run(run_all(args, plan, workdir))
    except KeyboardInterrupt:
        log("interrupted: every child process was stopped; nothing written")
        return 130
    finally:
        kill_all()
    seconds = time.monotonic() - started
    items = evaluate(results, plan.burst_ns, servers, args.servers)
    command = " ".join(["python -m benchmarks.fanout", *(argv or sys.argv[1:])])
    settings = {
        "server": f"uvicorn, 1 worker, uvloop, httptools, ws={args.ws}, pings off",
        "client": "picows (separate process); slow reader: raw socket, SO_RCVBUF 1 KiB",
    }
    versions = meta.versions(args.redis_server)
    if args.servers:
        settings["servers (Servers table)"] = report.SERVER_SETTINGS
        versions.update(server_versions())
    text = report.render(
        results,
        plan,
        items,
        when=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=command,
        machine=machine,
        versions=versions,
        settings=settings,
        seconds=seconds,
        matrix=servers,
        server_names=args.servers,
    )
    args.out.write_text(text)
    everything = {**results, **servers}
    png = args.plot or args.out.with_name("fanout.png")
    plotted = plot(results, plan.burst_ns, png)
    if args.json:
        args.json.write_text(json.dumps({k: dataclasses.asdict(v) for k, v in everything.items()}))
    print(report.summary(results, plan))
    if args.servers:
        print()
        print(report.servers(results, servers, args.servers, plan))
    print()
    print(report.targets(items))
    log(f"wrote {args.out}" + (f" and {png}" if plotted else "") + f" in {seconds:.0f}s")
    if any(r.errors or any("failed" in n for n in r.notes) for r in everything.values()):
        log(f"some workloads failed; the logs are in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
