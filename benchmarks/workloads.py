"""The workloads, each a coroutine over a :class:`~benchmarks.session.Session`.

Per system: memory → bursts (largest N first, closing clients in between) → slow reader share
one server; steady latency gets a fresh one (an overloaded peer's backlog must not leak into
the other measurements), and the external-publisher run gets another one when the server
could not keep up with the first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .plan import Plan
from .procs import kill, python, spawn
from .results import Burst, Memory, SlowReader, Steady, SystemResult, median
from .session import Session
from .systems import PEER_FAMILIES, System

Log = Callable[[str], None]
#: Workload names for ``--workloads`` (``burst`` is every N of the plan; ``steady`` includes the
#: external-publisher run).
WORKLOADS = ("memory", "burst", "slow", "steady")
#: A steady run that delivered less than this share of its messages could not keep up.
SATURATED = 0.95


async def connect(s: Session, n: int) -> None:
    await s.call("connect", 60 + n * 0.02, n=n, batch=s.system.connect_batch)


async def sync(s: Session, n: int, plan: Plan, times: int = 1) -> float:
    """Publishes that every client must receive (so all are subscribed); the fastest's seconds.

    Also a calibration: how long one message to ``n`` clients takes (see :func:`choose_m`).
    """
    best = math.inf
    for _ in range(times):
        result = await s.call("burst", 90, m=1, size=plan.size, deadline=60, idle=10)
        if not result["complete"]:
            raise RuntimeError(f"only {result['received']} of {n} clients got the sync message")
        best = min(best, float(result["seconds"]))
        if best > 0.1:  # slow enough to measure in one go
            break
    return best


#: Messages in the burst that times a system which joins queued messages into one frame.
JOINED_CALIBRATION_M = 16


async def per_message(s: Session, n: int, plan: Plan) -> float:
    """Seconds one message to ``n`` clients takes, to size the bursts (see :func:`choose_m`).

    A system whose frames may carry several messages (``split``: coalescing) is also timed on
    a burst of :data:`JOINED_CALIBRATION_M`: one message alone shows none of the joining, and
    would size its bursts as if every message cost a frame.
    """
    one = await sync(s, n, plan, times=3)
    if not s.system.split:
        return one
    k = min(plan.burst_m, JOINED_CALIBRATION_M)
    r = await s.call("burst", 90, m=k, size=plan.size, deadline=60, idle=10)
    if not r["complete"]:
        return one
    return min(one, float(r["seconds"]) / k)


def choose_m(plan: Plan, n: int, sync_seconds: float) -> int:
    """``plan.burst_m`` unless that would take longer than the per-burst budget."""
    per_message = max(sync_seconds, 1e-6)
    return max(plan.min_m, min(plan.burst_m, math.floor(plan.burst_budget / per_message)))


async def memory(s: Session, plan: Plan) -> Memory:
    """Server RSS with ``plan.memory_n`` idle clients minus RSS with none (after a warm-up)."""
    await connect(s, 20)
    await sync(s, 20, plan)
    await s.call("burst", 30, m=5, size=plan.size, deadline=20, idle=10)
    await connect(s, 0)
    await s.settle()
    idle = s.rss()
    await connect(s, plan.memory_n)
    await sync(s, plan.memory_n, plan)
    await s.settle()
    return Memory(plan.memory_n, idle, s.rss())


async def burst(s: Session, plan: Plan, n: int) -> Burst:
    await connect(s, n)
    m = choose_m(plan, n, await per_message(s, n, plan))
    await s.settle()
    idle = await s.call("idle_cpu", 10, seconds=plan.idle_seconds)
    deadline = max(30.0, 10 * plan.burst_budget)
    reps = []
    for _ in range(plan.reps):
        r = await s.call("burst", deadline + 30, m=m, size=plan.size, deadline=deadline, idle=5)
        received = max(r["received"], 1)
        cpu = {k: max(0.0, v - idle.get(k, 0.0) * r["seconds"]) for k, v in r["cpu_ns"].items()}
        reps.append(
            {
                **r,
                "deliveries_per_s": r["received"] / r["seconds"],
                "server_us": cpu["server"] / received / 1e3,
                "redis_us": cpu["redis"] / received / 1e3 if "redis" in cpu else None,
                "client_cpu": r["client_cpu_ns"] / 1e9 / r["seconds"],
            }
        )
    redis = [r["redis_us"] for r in reps if r["redis_us"] is not None]
    return Burst(
        n=n,
        m=m,
        deliveries_per_s=median([r["deliveries_per_s"] for r in reps]),
        server_us=median([r["server_us"] for r in reps]),
        redis_us=median(redis) if redis else None,
        client_cpu=median([r["client_cpu"] for r in reps]),
        complete=all(r["complete"] for r in reps),
        reps=reps,
    )


async def slow_reader(s: Session, plan: Plan) -> SlowReader:
    """A burst to ``slow_n`` readers, then to ``slow_n - 1`` of them plus one that never reads."""
    n = plan.slow_n
    await connect(s, n)
    m = choose_m(plan, n, await sync(s, n, plan, times=3))
    await s.settle()
    base = []
    for _ in range(plan.reps):
        r = await s.call("burst", 120, m=m, size=plan.size, deadline=60, idle=10)
        if not r["complete"]:
            raise RuntimeError(f"baseline burst incomplete ({r['received']}/{r['expected']})")
        base.append(r)
    await connect(s, n - 1)
    stall = await s.call("slow_open", 120)
    await s.settle()
    wait = max(3.0, 5 * max(r["seconds"] for r in base))
    slow = []
    for _ in range(plan.reps):
        r = await s.call("burst", wait + 30, m=m, size=plan.size, deadline=wait, idle=wait)
        slow.append(r)
        if not r["complete"]:
            break  # stalled: repeating would only wait again
    await s.call("slow_close", 10)
    return SlowReader(
        n=n,
        m=m,
        without=median([r["received"] / r["seconds"] for r in base]),
        with_slow=median([r["received"] / r["seconds"] for r in slow]),
        complete=all(r["complete"] for r in slow),
        stall=stall,
    )


async def steady(s: Session, plan: Plan, *, external: bool, workdir: Path | None = None) -> Steady:
    """``steady_rate`` publishes/s for ``steady_seconds``; latency percentiles at the clients."""
    await connect(s, plan.steady_n)
    await sync(s, plan.steady_n, plan)
    await s.settle()
    drain = plan.steady_drain
    publisher = None
    if external:
        assert workdir is not None and s.redis_url is not None and s.system.publisher
        args = [s.system.publisher, "--redis", s.redis_url, "--rate", str(plan.steady_rate)]
        args += ["--seconds", str(plan.steady_seconds), "--size", str(plan.size)]
        log = workdir / f"{s.system.name}-publisher.log"
        publisher = spawn(python("benchmarks.publisher", *args), log)
        drain += 3.0  # the publisher's own start-up
    try:
        r = await s.call(
            "steady",
            plan.steady_seconds + drain + 60,
            rate=plan.steady_rate,
            seconds=plan.steady_seconds,
            size=plan.size,
            external=external,
            drain=drain,
        )
    finally:
        if publisher is not None:
            kill(publisher)
    return Steady(
        n=r["connections"],
        rate=plan.steady_rate,
        seconds=plan.steady_seconds,
        external=external,
        expected=r["expected"],
        received=r["received"],
        latency_ms=r["latency_ms"],
    )


async def phase(result: SystemResult, name: str, work: Awaitable[Any], log: Log) -> Any:
    """Run one workload; a failure is recorded under ``name`` and the run goes on."""
    start = time.monotonic()
    try:
        value = await work
    except Exception as exc:
        result.errors[name] = f"{type(exc).__name__}: {exc}"
        log(f"  {name}: FAILED {result.errors[name]}")
        return None
    log(f"  {name}: done in {time.monotonic() - start:.1f}s")
    return value


Work = Callable[[Session], Awaitable[Any]]
Store = Callable[[Any], None]


async def run_system(
    result: SystemResult,
    system: System,
    plan: Plan,
    workdir: Path,
    log: Log,
    *,
    ws: str,
    redis_bin: str,
    workloads: frozenset[str] = frozenset(WORKLOADS),
) -> None:
    """The selected workloads (default: all) for one system, filling ``result`` as it goes;
    never raises."""

    def session(tag: str) -> Session:
        return Session(system, plan, workdir, tag, ws=ws, redis_bin=redis_bin)

    def store_burst(n: int) -> Store:
        return lambda b: result.bursts.__setitem__(n, b)

    pending: list[tuple[str, Work, Store]] = []
    if "memory" in workloads:
        pending.append(
            ("memory", lambda s: memory(s, plan), lambda m: setattr(result, "memory", m))
        )
    if "burst" in workloads:
        for n in sorted(plan.burst_ns, reverse=True):
            pending.append((f"burst N={n}", lambda s, n=n: burst(s, plan, n), store_burst(n)))
    if "slow" in workloads:
        if plan.slow_peers or system.family not in PEER_FAMILIES:
            pending.append(
                (
                    "slow reader",
                    lambda s: slow_reader(s, plan),
                    lambda r: setattr(result, "slow", r),
                )
            )
        else:
            result.notes.append("slow reader: not run for peers in a quick run")
    try:
        await _in_sessions(pending, result, session, log)
    except Exception as exc:
        result.errors["server"] = f"{type(exc).__name__}: {exc}"
        log(f"  server: FAILED {result.errors['server']}")
    if "steady" not in workloads:
        return
    try:
        await _steady_sessions(result, system, plan, workdir, log, session)
    except Exception as exc:
        result.errors["steady server"] = f"{type(exc).__name__}: {exc}"
        log(f"  steady server: FAILED {result.errors['steady server']}")


async def _in_sessions(
    pending: list[tuple[str, Work, Store]],
    result: SystemResult,
    session: Callable[[str], Session],
    log: Log,
) -> None:
    """Run the workloads in order on one server; after a failure, on a fresh one.

    A workload that fails is tried once more on the fresh server (a peer that breaks down
    under one workload should not lose the others); the first failure stays in the notes.
    """
    retried: set[str] = set()
    while pending:
        async with session("burst") as s:
            while pending:
                item = pending.pop(0)
                name, work, store = item
                value = await phase(result, name, work(s), log)
                if value is not None:
                    store(value)
                    continue
                if name not in retried:
                    retried.add(name)
                    result.notes.append(f"{name}: failed once ({result.errors.pop(name)})")
                    pending.insert(0, item)
                if pending:
                    log("  restarting the server for the remaining workloads")
                break


async def _steady_sessions(
    result: SystemResult,
    system: System,
    plan: Plan,
    workdir: Path,
    log: Log,
    session: Callable[[str], Session],
) -> None:
    async with session("steady") as s:
        result.steady = await phase(result, "steady", steady(s, plan, external=False), log)
        if system.publisher is None:
            return
        st = result.steady
        saturated = st is not None and st.received < SATURATED * st.expected
        if saturated and system.family in PEER_FAMILIES and not plan.external_when_saturated:
            result.notes.append(
                "external publisher: not run in a quick run (the server could not keep up "
                "with this rate even publishing in-process)"
            )
            return
        if not saturated and await s.settle(limit=3.0):
            work = steady(s, plan, external=True, workdir=workdir)
            result.steady_external = await phase(result, "steady (external)", work, log)
            return
    log("  server still busy after the steady run: restarting it for the external publisher")
    async with session("external") as s:
        work = steady(s, plan, external=True, workdir=workdir)
        result.steady_external = await phase(result, "steady (external)", work, log)
