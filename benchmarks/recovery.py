"""History and recovery benchmark: ``python -m benchmarks.recovery [--quick] [--large]
[--no-redis] [--parts cost,storm] [--out FILE] [--json FILE]``.

Two measurements, each side by side in one run (README.md, "History and recovery"):

* **history cost** — server CPU per delivery of a burst to N members (the fan-out harness'
  load generator, CPU accounting and uvicorn configuration) with history off, with history on
  behind a plain ``WsView``, and behind a ``RecoverableView``; every server is up at once and
  the rounds alternate between them; medians over the rounds.
* **reconnect storm** — clients of a ``RecoverableView`` with history on all disconnect, messages
  are published, then all reconnect at once and resume with their positions: the time until
  every one has its missed messages, the server's CPU and peak memory, and a check that each
  got exactly what it missed, in order; against plain reconnects with history off.

Writes benchmarks/RECOVERY.md (``--out``) and prints the tables. The storm's client runs in its
own process (``--storm-client``, started by the harness).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from . import meta, protocol
from . import plan as fanout_plan
from .apps.recoverable import COUNT
from .procs import free_port, kill, kill_all, python, redis_server, spawn, wait_for_port
from .procstat import cpu_of, rss_bytes
from .report import num, table
from .serve import DEFAULT_WS
from .session import HOST, Session
from .systems import System
from .targets import Target
from .workloads import connect, sync

HERE = Path(__file__).resolve().parent
GROUP_CHANNEL = f"g:{protocol.GROUP}"
#: The history-cost target: server CPU per delivery with history on / with history off.
COST_GOAL = 1.10
COST_TARGET_N = 1000


# -- plan ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RecoveryPlan:
    """Sizes of one run. ``storm_missed`` is at most ``HistoryLimits().size`` (100), so that
    every resuming client can be given everything it missed."""

    quick: bool
    burst_ns: tuple[int, ...]
    burst_m: int
    rounds: int
    idle_seconds: float
    storm_n: int
    storm_warm: int
    storm_missed: int
    storm_kinds: tuple[str, ...]
    storm_reps: int
    part_limit: float

    def fanout(self) -> fanout_plan.Plan:
        """The fan-out harness' plan with these sizes (what its helpers read)."""
        base = fanout_plan.QUICK if self.quick else fanout_plan.FULL
        return dataclasses.replace(
            base,
            burst_ns=self.burst_ns,
            burst_m=self.burst_m,
            reps=1,
            idle_seconds=self.idle_seconds,
            burst_budget=fanout_plan.FULL.burst_budget,
        )


FULL = RecoveryPlan(
    quick=False,
    burst_ns=(1000,),
    burst_m=50,
    rounds=11,
    idle_seconds=0.5,
    storm_n=1000,
    storm_warm=10,
    storm_missed=100,
    storm_kinds=("plain", "fresh", "resume"),
    storm_reps=3,
    part_limit=240.0,
)
QUICK = dataclasses.replace(
    FULL,
    quick=True,
    burst_m=20,
    rounds=3,
    idle_seconds=0.3,
    storm_kinds=("plain", "resume"),
    storm_reps=1,
)


# -- systems ------------------------------------------------------------------------------------

REDIS_NEEDS = ("asgi_groups.backends.redis", "redis")


#: The history-cost variants: name, what serves the clients, app variant, client dialect.
COST_VARIANTS = (
    ("asgi_groups", "WsView, history off", "plain", "ws"),
    ("asgi_groups+history", "WsView, history on", "plain+history", "ws"),
    ("recoverable+history", "RecoverableView, history on", "recoverable+history", "ag"),
)


def cost_systems(redis: bool) -> list[System]:
    """The burst variants, memory backend first; ``family`` is the backend."""
    out = []
    for backend in ("memory", "redis") if redis else ("memory",):
        on_redis = backend == "redis"
        for name, what, variant, dialect in COST_VARIANTS:
            if on_redis:
                head, plus, tail = name.partition("+")
                name = f"{head}-redis{plus}{tail}"
            out.append(
                System(
                    name,
                    f"{name} ({what}{', Redis' if on_redis else ''})",
                    backend,
                    f"recovery-{variant}",
                    needs=REDIS_NEEDS if on_redis else (),
                    dialect=dialect,
                    redis=on_redis,
                )
            )
    return out


def baseline_of(name: str) -> str:
    return "asgi_groups-redis" if "-redis" in name else "asgi_groups"


@dataclasses.dataclass(frozen=True, slots=True)
class StormKind:
    name: str
    label: str
    variant: str
    hello: str  # "none": a plain client; "fresh": ag.hello without positions; "resume"


STORM_KINDS = {
    "plain": StormKind("plain", "plain reconnect, history off", "plain", "none"),
    "fresh": StormKind(
        "fresh", "recoverable, hello without positions", "recoverable+history", "fresh"
    ),
    "resume": StormKind(
        "resume", "recoverable, resume with positions", "recoverable+history", "resume"
    ),
}


def redis_history_missing(redis_bin: str) -> str | None:
    """Why the Redis variants cannot run here, or None."""
    try:
        from asgi_groups.backends.base import Backend
        from asgi_groups.backends.redis import RedisBackend
    except ImportError as exc:
        return f"the Redis backend cannot be imported ({exc})"
    if RedisBackend.recover is Backend.recover:
        return "RedisBackend keeps no history yet (no RedisBackend.recover)"
    if shutil.which(redis_bin) is None:
        return f"{redis_bin} not found"
    return None


def source_state() -> str:
    """The commit measured, and whether the library's files differed from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "asgi_groups"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = sorted(line[3:] for line in dirty if line.strip())
    if not changed:
        return head
    return f"{head} with uncommitted changes to {', '.join(changed)}"


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- history cost -------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Cost:
    """One variant's bursts at one N, one entry per round."""

    name: str
    label: str
    n: int
    m: int
    server_us: list[float] = dataclasses.field(default_factory=list)
    rate: list[float] = dataclasses.field(default_factory=list)
    redis_us_publish: list[float] = dataclasses.field(default_factory=list)
    busy: list[float] = dataclasses.field(default_factory=list)
    complete: bool = True

    @property
    def median_us(self) -> float | None:
        return _median(self.server_us)


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


async def measure_cost(
    systems: list[System],
    plan: RecoveryPlan,
    workdir: Path,
    *,
    ws: str,
    redis_bin: str,
    errors: dict[str, str],
) -> list[Cost]:
    """Every variant's server up at once, N clients each; rounds of one burst per variant."""
    fplan = plan.fanout()
    out: list[Cost] = []
    async with contextlib.AsyncExitStack() as stack:
        sessions: dict[str, Session] = {}
        for system in systems:
            try:
                session = Session(system, fplan, workdir, "cost", ws=ws, redis_bin=redis_bin)
                sessions[system.name] = await stack.enter_async_context(session)
            except Exception as exc:
                errors[system.name] = f"server: {type(exc).__name__}: {exc}"
                log(f"  {system.name}: FAILED to start ({exc})")
        for n in plan.burst_ns:
            m = plan.burst_m if n <= COST_TARGET_N else max(2, plan.burst_m * COST_TARGET_N // n)
            for name, s in list(sessions.items()):
                try:
                    await connect(s, n)
                    await sync(s, n, fplan, times=2)
                except Exception as exc:
                    errors[name] = f"N={n}: {type(exc).__name__}: {exc}"
                    log(f"  {name}: FAILED at N={n} ({exc})")
                    del sessions[name]
            log(f"  N={n}: {len(sessions)} servers with {n:,} clients each, M={m}")
            idle: dict[str, dict[str, float]] = {}
            costs: dict[str, Cost] = {}
            for name, s in sessions.items():
                await s.settle()
                idle[name] = await s.call("idle_cpu", 10, seconds=plan.idle_seconds)
                costs[name] = Cost(name, s.system.label, n, m)
            for round_ in range(plan.rounds):
                for name in round_order(list(sessions), round_):
                    if name not in sessions:
                        continue
                    try:
                        await _burst(sessions[name], costs[name], idle[name], m, fplan)
                    except Exception as exc:
                        errors[name] = f"N={n} round {round_ + 1}: {type(exc).__name__}: {exc}"
                        log(f"  {name}: FAILED ({exc})")
                        del sessions[name]
                summary = ", ".join(
                    f"{c.name} {c.server_us[-1]:.2f}" for c in costs.values() if c.server_us
                )
                log(f"  N={n} round {round_ + 1}/{plan.rounds}: µs/delivery {summary}")
            out.extend(costs.values())
    return out


def round_order(names: list[str], round_: int) -> list[str]:
    """Each backend's variants next to each other (history off beside history on), forwards in
    even rounds and backwards in odd ones; the backends alternate which goes first."""
    backends = [[n for n in names if "-redis" not in n], [n for n in names if "-redis" in n]]
    backends = [b for b in backends if b]
    if round_ % 2:
        backends = [list(reversed(b)) for b in reversed(backends)]
    if (round_ // 2) % 2:
        backends.reverse()
    return [name for b in backends for name in b]


async def _burst(
    s: Session, cost: Cost, idle: dict[str, float], m: int, fplan: fanout_plan.Plan
) -> None:
    await s.settle()
    deadline = max(30.0, 10 * fplan.burst_budget)
    r = await s.call("burst", deadline + 30, m=m, size=fplan.size, deadline=deadline, idle=5)
    cpu = {k: max(0.0, v - idle.get(k, 0.0) * r["seconds"]) for k, v in r["cpu_ns"].items()}
    received = max(r["received"], 1)
    cost.complete = cost.complete and bool(r["complete"])
    cost.server_us.append(cpu["server"] / received / 1e3)
    cost.rate.append(r["received"] / r["seconds"])
    cost.busy.append(cpu["server"] / 1e9 / r["seconds"])
    if "redis" in cpu:
        cost.redis_us_publish.append(cpu["redis"] / m / 1e3)


def cost_targets(costs: list[Cost], redis: bool) -> list[Target]:
    out = []
    for backend in ("memory", "redis") if redis else ("memory",):
        suffix = "-redis" if backend == "redis" else ""
        on = _cost(costs, f"asgi_groups{suffix}+history", COST_TARGET_N)
        off = _cost(costs, f"asgi_groups{suffix}", COST_TARGET_N)
        name = (
            f"history cost N={COST_TARGET_N:,} ({backend}): server CPU/delivery, "
            "history on vs off (plain WsView)"
        )
        out.append(_ratio_target(name, on, off))
    return out


def _cost(costs: list[Cost], name: str, n: int) -> Cost | None:
    return next((c for c in costs if c.name == name and c.n == n), None)


def paired_ratio(on: Cost, off: Cost) -> float | None:
    """Median over the rounds of ``on``'s CPU per delivery over ``off``'s in the same round
    (the two bursts were made seconds apart, so a drift of the machine's load cancels out)."""
    ratios = [a / b for a, b in zip(on.server_us, off.server_us, strict=False) if b > 0]
    return _median(ratios)


def _ratio_target(name: str, on: Cost | None, off: Cost | None) -> Target:
    goal = f"≤ {COST_GOAL:.2f}x"
    if on is None or off is None or not on.complete or not off.complete:
        return Target(name, goal, "—", None)
    ratio = paired_ratio(on, off)
    a, b = on.median_us, off.median_us
    if ratio is None or a is None or b is None:
        return Target(name, goal, "—", None)
    measured = (
        f"{ratio:.2f}x (median of {min(len(on.server_us), len(off.server_us))} rounds' ratios; "
        f"medians {a:.2f} vs {b:.2f} µs)"
    )
    return Target(name, goal, measured, ratio <= COST_GOAL)


# -- reconnect storm: the harness side ----------------------------------------------------------


async def run_storm(
    kind: StormKind,
    redis: bool,
    plan: RecoveryPlan,
    workdir: Path,
    *,
    ws: str,
    redis_bin: str,
) -> dict[str, Any]:
    """One storm on a fresh server (and redis-server); the client process's report."""
    tag = f"storm-{kind.name}{'-redis' if redis else ''}"
    async with contextlib.AsyncExitStack() as stack:
        redis_url, redis_pid = None, None
        if redis:
            redis_url, redis_pid = await stack.enter_async_context(
                redis_server(workdir / f"{tag}-redis.log", redis_bin)
            )
        port = free_port()
        args = [f"recovery-{kind.variant}", "--port", str(port), "--ws", ws]
        if redis_url:
            args += ["--redis", redis_url]
        server = spawn(python("benchmarks.serve", *args), workdir / f"{tag}-server.log")
        stack.callback(kill, server)
        await wait_for_port(port, server)
        config = {
            "url": f"ws://{HOST}:{port}/ws",
            "origin": f"http://{HOST}:{port}",
            "hello": kind.hello,
            "n": plan.storm_n,
            "warm": plan.storm_warm,
            "missed": plan.storm_missed,
            "size": fanout_plan.FULL.size,
            "pids": {"server": server.pid, **({"redis": redis_pid} if redis_pid else {})},
        }
        cmd = python("benchmarks.recovery", "--storm-client", json.dumps(config))
        client = spawn(cmd, workdir / f"{tag}-client.log", pipes=True)
        stack.callback(kill, client)
        assert client.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(client.stdout.readline), 180)
        if not line:
            raise RuntimeError(f"the storm client exited with code {client.poll()}")
        result: dict[str, Any] = json.loads(line)
        if "error" in result:
            raise RuntimeError(result["error"])
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}")
        result.update(kind=kind.name, label=kind.label, backend="redis" if redis else "memory")
        return result


# -- reconnect storm: the client process --------------------------------------------------------

monotonic_ns = time.monotonic_ns
TEXT = WSMsgType.TEXT
CLOSE = WSMsgType.CLOSE
#: Attempts per client in a storm, the first included (official clients retry without limit).
MAX_ATTEMPTS = 5


class StormFailed(RuntimeError):
    """A phase of the storm did not complete."""


class Phase:
    """Waits for ``count`` connections to be done; snapshots the CPU times at the last one."""

    def __init__(self, name: str, count: int, pids: dict[str, int] | None = None) -> None:
        self.name = name
        self.count = self.left = count
        self.pids = pids
        self.end_ns = 0
        self.cpu: dict[str, int] = {}
        self.done = asyncio.Event()
        if count == 0:
            self.done.set()

    def one_done(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.end_ns = monotonic_ns()
            if self.pids:
                self.cpu = cpu_of(self.pids)
            self.done.set()

    async def wait(self, timeout: float, *, fail: bool = True) -> bool:
        """True when every connection is done; after ``timeout``, False or ``StormFailed``."""
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except TimeoutError:
            if not fail:
                self.end_ns = monotonic_ns()  # the figures then cover the whole wait
                if self.pids:
                    self.cpu = cpu_of(self.pids)
                return False
            raise StormFailed(
                f"{self.name}: {self.left:,} of {self.count:,} connections not done "
                f"after {timeout:.0f}s"
            ) from None
        return True


class StormConn(WSListener):
    """One client: tracks its position on the group's channel and checks every message.

    Done in a phase when it has its welcome (if it waits for one) and ``expect`` messages, each
    one offset after the previous in the same epoch, the benchmark's sequence numbers counting
    up from 0. Anything else is recorded in ``errors``.
    """

    def __init__(self, hello: bytes | None, slot: int = 0) -> None:
        self.transport: WSTransport | None = None
        self.slot = slot
        #: Called when the connection ends before it is done (the storm reconnects it).
        self.on_lost: Callable[[StormConn], None] | None = None
        self.replaced = False
        self.lost_reason: str | None = None
        #: Why each earlier attempt of this client ended (close codes, failed handshakes).
        self.lost_history: list[str] = []
        self.hello = hello
        self.phase: Phase | None = None
        self.expect = 0
        self.need_welcome = False
        self.finished = True
        self.welcome: dict[str, Any] | None = None
        self.epoch: str | None = None
        self.offset = 0
        self.star: dict[str, Any] | None = None
        self.got = 0
        self.last_seq = -1
        self.errors: list[str] = []
        self.connected_ns = self.welcome_ns = self.done_ns = 0
        self.counts: asyncio.Future[int] | None = None
        self.close_code: int | None = None

    def arm(self, phase: Phase, expect: int, need_welcome: bool) -> None:
        self.phase = phase
        self.expect = expect
        self.need_welcome = need_welcome
        self.finished = False
        self.got = 0
        self.last_seq = -1
        self.done_ns = 0
        if self.transport is not None:
            self._check()

    def position(self) -> dict[str, Any]:
        """The hello of a client resuming from what it saw."""
        positions: dict[str, Any] = {GROUP_CHANNEL: {"epoch": self.epoch, "offset": self.offset}}
        if self.star is not None and "epoch" in self.star:
            positions["*"] = {"epoch": self.star["epoch"], "offset": self.star["offset"]}
        return {"type": "ag.hello", "positions": positions}

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.connected_ns = monotonic_ns()
        if self.hello is not None:
            transport.send(TEXT, self.hello)
        self._check()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.on_lost is not None and not self.finished:
            self.on_lost(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not TEXT:
            if frame.msg_type is CLOSE and self.close_code is None:
                self.close_code = int(frame.get_close_code())
            return
        data = frame.get_payload_as_bytes()
        if data[:1] == b"{":
            body = json.loads(data)
            kind = body.get("type")
            if kind == "ag.message":
                self._message(body)
            elif kind == "ag.welcome":
                self._welcome(body)
            else:
                self.errors.append(f"unexpected frame {data[:80]!r}")
        elif data.startswith(b"count "):
            if self.counts is not None and not self.counts.done():
                self.counts.set_result(int(data[6:]))
        else:  # a plain view's message: "<ns> <seq> xxx…"
            self._sequence(int(data.split(b" ", 2)[1]))

    def _welcome(self, body: dict[str, Any]) -> None:
        if self.welcome is not None:
            self.errors.append("a second welcome")
        self.welcome = body
        self.welcome_ns = monotonic_ns()
        channel = body.get("channels", {}).get(GROUP_CHANNEL, {})
        self.epoch, self.offset = channel.get("epoch"), channel.get("offset", 0)
        self.star = body.get("channels", {}).get("*")
        self._check()

    def _message(self, body: dict[str, Any]) -> None:
        if self.welcome is None:
            self.errors.append("a message before the welcome")
        if body.get("channel") != GROUP_CHANNEL:
            self.errors.append(f"a message on {body.get('channel')!r}")
            return
        epoch, offset = body.get("epoch"), body.get("offset")
        if epoch != self.epoch:
            self.errors.append(f"epoch {epoch!r} after {self.epoch!r}")
        elif offset != self.offset + 1:
            what = "duplicate" if isinstance(offset, int) and offset <= self.offset else "gap"
            self.errors.append(f"{what}: offset {offset} after {self.offset}")
        self.epoch, self.offset = epoch, offset
        self._sequence(int(str(body["data"]).split(" ", 2)[1]))

    def _sequence(self, seq: int) -> None:
        if seq != self.last_seq + 1:
            self.errors.append(f"message {seq} after {self.last_seq}")
        self.last_seq = seq
        self.got += 1
        if self.got > self.expect:
            self.errors.append(f"{self.got} messages, {self.expect} expected")
        self._check()

    def _check(self) -> None:
        if self.finished or self.transport is None:
            return
        if self.need_welcome and self.welcome is None:
            return
        if self.got >= self.expect:
            self.finished = True
            self.done_ns = monotonic_ns()
            assert self.phase is not None
            self.phase.one_done()


class StormClient:
    """The storm, phase by phase: connect, warm up, disconnect all, publish, reconnect all."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.url: str = config["url"]
        self.origin: str = config["origin"]
        self.mode: str = config["hello"]
        self.n: int = config["n"]
        self.warm: int = config["warm"]
        self.missed: int = config["missed"]
        self.size: int = config["size"]
        self.pids: dict[str, int] = config["pids"]
        self.recoverable = self.mode != "none"
        self.storm = Phase("storm", 0)
        self.expect = 0
        self.slots: list[StormConn] = []
        self.random = random.Random(1)
        self.tasks: set[asyncio.Task[None]] = set()

    async def open(self, conn: StormConn, timeout: float = 30.0) -> StormConn:
        async with asyncio.timeout(timeout):
            await ws_connect(
                lambda: conn,
                self.url,
                extra_headers={"Origin": self.origin},
                read_buffer_init_size=4096,
                websocket_handshake_timeout=timeout,
            )
        return conn

    @staticmethod
    def close(conn: StormConn) -> None:
        if conn.transport is not None:
            conn.transport.send_close(WSCloseCode.OK)
            conn.transport.disconnect()

    def hello_of(self, conn: StormConn | None) -> bytes | None:
        if self.mode == "none":
            return None
        if self.mode == "resume" and conn is not None:
            return json.dumps(conn.position()).encode()
        return b'{"type":"ag.hello"}'

    @staticmethod
    def trigger(control: StormConn, text: str) -> None:
        assert control.transport is not None
        control.transport.send(TEXT, text.encode())

    async def count(self, control: StormConn) -> int:
        control.counts = asyncio.get_running_loop().create_future()
        self.trigger(control, COUNT)
        return int(await asyncio.wait_for(control.counts, 5))

    async def run(self) -> dict[str, Any]:
        n, warm, missed = self.n, self.warm, self.missed
        # 1. a control connection (triggers, counts) and n clients, 100 at a time
        control = StormConn(self.hello_of(None))
        ready = Phase("control", 1)
        control.arm(ready, 0, self.recoverable)
        await self.open(control)
        await ready.wait(10)
        phase = Phase("connect", n)
        conns: list[StormConn] = []
        for start in range(0, n, 100):
            batch = [StormConn(self.hello_of(None)) for _ in range(min(100, n - start))]
            for conn in batch:
                conn.arm(phase, 0, self.recoverable)
            await asyncio.gather(*(self.open(c) for c in batch))
            conns.extend(batch)
        await phase.wait(30)
        # 2. warm-up: every client has seen `warm` messages (its position is past them)
        phase = Phase("warm-up", n)
        for conn in conns:
            conn.arm(phase, warm, False)
        control.arm(Phase("control warm-up", 1), warm, False)
        self.trigger(control, protocol.burst(warm, self.size))
        await phase.wait(30)
        # 3. all disconnect; wait until the server holds only the control connection
        rss_connected = rss_bytes(self.pids["server"])
        for conn in conns:
            self.close(conn)
        give_up = time.monotonic() + 30
        while (open_ := await self.count(control)) > 1:
            if time.monotonic() > give_up:
                raise StormFailed(f"the server still holds {open_ - 1} closed clients after 30s")
            await asyncio.sleep(0.05)
        # 4. `missed` messages while they are away (the control connection sees them)
        published = Phase("publish", 1)
        control.arm(published, missed, False)
        self.trigger(control, protocol.burst(missed, self.size))
        await published.wait(30)
        await self.settle()
        # 5. the storm: all reconnect at once, each with the hello its mode sends; one the
        # server closes (or fails to take) comes back as the official clients do
        self.storm = Phase("storm", n, self.pids)
        self.expect = missed if self.mode == "resume" else 0
        self.slots = []
        for slot, old in enumerate(conns):
            conn = StormConn(self.hello_of(old), slot)
            conn.arm(self.storm, self.expect, self.recoverable)
            conn.on_lost = self.retry
            self.slots.append(conn)
        server = self.pids["server"]
        rss0 = rss_bytes(server)
        peak = [rss0]
        sampling = asyncio.get_running_loop().create_task(self.sample(server, peak))
        cpu0, t0 = cpu_of(self.pids), monotonic_ns()
        await asyncio.gather(*(self.attempt(c) for c in self.slots))
        complete = await self.storm.wait(60, fail=False)
        quiet_cpu = await self.settle()
        t_quiet = monotonic_ns()
        sampling.cancel()
        peak[0] = max(peak[0], rss_bytes(server))
        new = self.slots
        for conn in new:
            conn.on_lost = None
        report = self.storm_report(new, self.storm, t0, cpu0, quiet_cpu, t_quiet, rss0, peak[0])
        report["rss_connected"] = rss_connected
        report["rss_after"] = rss_bytes(server)
        report["complete"] = complete
        if not complete:
            report["errors"].insert(0, f"{self.storm.left:,} of {n:,} not done after 60 s")
        # 6. live after the storm: one more message, right after what each client holds
        alive = [c for c in new if c.transport is not None and c.close_code is None]
        live = Phase("live", len(alive))
        live_ok = 0
        for conn in alive:
            conn.arm(live, 1, False)
        control.arm(Phase("control live", 1), 1, False)
        self.trigger(control, protocol.burst(1, self.size))
        with contextlib.suppress(StormFailed):
            await live.wait(20)
        top = warm + missed + 1
        for conn in alive:
            if conn.finished and not conn.errors:
                live_ok += 1 if (not self.recoverable or conn.offset == top) else 0
        report["live_ok"] = live_ok
        for conn in new:
            self.close(conn)
        self.close(control)
        return report

    async def attempt(self, conn: StormConn) -> None:
        """Open ``conn``; a failed handshake counts as a lost connection."""
        try:
            await self.open(conn)
        except Exception as exc:
            conn.lost_reason = f"handshake failed: {type(exc).__name__}"
            self.retry(conn)

    def retry(self, lost: StormConn) -> None:
        """``lost`` closed before it was done: reconnect like the official clients (a random
        delay in [0, 0.5 s x 2**attempt], the same positions), at most ``MAX_ATTEMPTS`` times."""
        if lost.finished or lost.replaced:
            return
        lost.replaced = True
        lost.on_lost = None
        reason = lost.lost_reason or (
            f"closed {lost.close_code}" if lost.close_code is not None else "closed 1006"
        )
        history = [*lost.lost_history, reason]
        if len(history) >= MAX_ATTEMPTS:
            lost.lost_history = history
            lost.finished = True
            lost.errors.append(f"gave up after {len(history)} attempts")
            self.storm.one_done()
            return
        conn = StormConn(lost.hello, lost.slot)
        conn.lost_history = history
        conn.arm(self.storm, self.expect, self.recoverable)
        conn.on_lost = self.retry
        self.slots[lost.slot] = conn
        delay = self.random.random() * min(30.0, 0.5 * 2 ** (len(history) - 1))
        loop = asyncio.get_running_loop()
        loop.call_later(delay, lambda: self.tasks.add(loop.create_task(self.attempt(conn))))

    async def settle(self, busy: float = 0.05, window: float = 0.1, limit: float = 10.0) -> dict:
        """Until the server (and redis-server) use under ``busy`` of a CPU; their CPU times."""
        give_up = time.monotonic() + limit
        while True:
            before = cpu_of(self.pids)
            await asyncio.sleep(window)
            after = cpu_of(self.pids)
            rate = max((after[k] - before[k]) / 1e9 / window for k in after)
            if rate < busy or time.monotonic() > give_up:
                return after

    @staticmethod
    async def sample(pid: int, peak: list[int]) -> None:
        while True:
            with contextlib.suppress(OSError, RuntimeError):
                peak[0] = max(peak[0], rss_bytes(pid))
            await asyncio.sleep(0.005)

    def storm_report(
        self,
        conns: list[StormConn],
        storm: Phase,
        t0: int,
        cpu0: dict[str, int],
        quiet_cpu: dict[str, int],
        t_quiet: int,
        rss0: int,
        peak: int,
    ) -> dict[str, Any]:
        expect = self.missed if self.mode == "resume" else 0
        ok, errors, first_try = 0, [], 0
        replayed = [c.got for c in conns if c.transport is not None]
        recovered = 0
        lost = Counter(reason for c in conns for reason in c.lost_history)
        for conn in conns:
            problems = list(conn.errors)
            if conn.transport is None:
                problems.append("never connected")
            if conn.close_code is not None:
                problems.append(f"closed by the server with {conn.close_code}")
            if self.recoverable:
                welcome = conn.welcome or {}
                channel = welcome.get("channels", {}).get(GROUP_CHANNEL, {})
                if not welcome:
                    problems.append("no welcome")
                elif self.mode == "resume":
                    if welcome.get("recovered") is True and channel.get("recovered") is True:
                        recovered += 1
                    else:
                        problems.append(f"not recovered: {channel.get('reason')!r}")
            if conn.got != expect:
                problems.append(f"{conn.got} messages, {expect} expected")
            if expect and conn.offset != self.warm + self.missed:
                problems.append(f"ends at offset {conn.offset}")
            if problems:
                errors.append("; ".join(problems[:3]))
            else:
                ok += 1
                first_try += not conn.lost_history
        done = array("q", sorted(c.done_ns - t0 for c in conns if c.done_ns))
        welcomes = array("q", sorted(c.welcome_ns - t0 for c in conns if c.welcome_ns))
        handshakes = [c.connected_ns - t0 for c in conns if c.connected_ns]
        return {
            "n": self.n,
            "missed": expect,
            "seconds": (storm.end_ns - t0) / 1e9,
            "handshakes_seconds": max(handshakes, default=0) / 1e9,
            "done_ms": _points(done),
            "welcome_ms": _points(welcomes),
            "cpu_ns": {k: storm.cpu.get(k, 0) - cpu0[k] for k in cpu0},
            "cpu_quiet_ns": {k: quiet_cpu[k] - cpu0[k] for k in cpu0},
            "quiet_seconds": (t_quiet - t0) / 1e9,
            "rss_before": rss0,
            "rss_peak": peak,
            "ok": ok,
            "first_try_ok": first_try,
            "retried": sum(1 for c in conns if c.lost_history),
            "lost": dict(lost.most_common()),
            "recovered": recovered,
            "replayed_min": min(replayed, default=0),
            "replayed_max": max(replayed, default=0),
            "errors": [f"{k} ({v:,} clients)" for k, v in Counter(errors).most_common(8)],
            "error_count": self.n - ok,
        }


def _points(samples: array[int]) -> dict[str, float]:
    if not samples:
        return {}
    last = len(samples) - 1
    return {
        "p50": samples[last // 2] / 1e6,
        "p99": samples[min(last, int(0.99 * len(samples)))] / 1e6,
        "max": samples[last] / 1e6,
    }


def storm_client_main(config_json: str) -> int:
    import uvloop

    from .limits import raise_nofile

    raise_nofile()

    async def main() -> dict[str, Any]:
        try:
            return await StormClient(json.loads(config_json)).run()
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}

    result = uvloop.run(main())
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# -- report -------------------------------------------------------------------------------------


def cost_table(costs: list[Cost]) -> str:
    rows = []
    for c in costs:
        base = next((b for b in costs if b.name == baseline_of(c.name) and b.n == c.n), None)
        paired = None if base is None else paired_ratio(c, base)
        ratio = "—" if paired is None else f"{paired:.2f}x"
        spread = f"{min(c.server_us):.2f} to {max(c.server_us):.2f}" if c.server_us else "—"
        rows.append(
            [
                c.label,
                f"{c.n:,}",
                str(c.m),
                str(len(c.server_us)),
                num(c.median_us, ".2f"),
                spread,
                ratio,
                num(_median(c.rate)),
                num(_median(c.redis_us_publish), ".1f"),
                num((_median(c.busy) or 0) * 100, ".0f", "%") if c.busy else "—",
                str(frame_bytes(c.name)),
                "yes" if c.complete else "NO",
            ]
        )
    header = ["system", "N", "M", "rounds", "server µs/delivery (median)", "range over rounds"]
    header += ["vs history off (paired)", "deliveries/s", "redis-server µs/publish", "server busy"]
    header += ["bytes/frame", "complete"]
    return table(header, rows)


def frame_bytes(name: str) -> int:
    """Payload of one delivery: the 100-byte message, or its ``ag.message`` envelope."""
    text = protocol.message(0, fanout_plan.FULL.size)
    if not name.startswith("recoverable"):
        return len(text)
    from asgi_groups.frames import Frame
    from asgi_groups.history import Position
    from asgi_groups.stream import message_frame

    position = Position("0123456789abcdef:1", 1000)
    return message_frame(GROUP_CHANNEL, position, Frame.text(text)).size


def storm_table(storms: list[dict[str, Any]]) -> str:
    """Time and CPU of each storm."""
    rows = []
    for s in storms:
        if "error" in s:
            rows.append([s["label"], s["backend"], f"**FAILED**: {s['error']}", *[""] * 9])
            continue
        quiet = s["cpu_quiet_ns"].get("server", 0)
        redis = s["cpu_quiet_ns"].get("redis")
        done = s["done_ms"]
        rows.append(
            [
                s["label"],
                s["backend"],
                f"{s['n']:,}",
                str(s["missed"]),
                f"{s['seconds'] * 1e3:,.0f}{_range(s.get('seconds_ms_range'))}"
                + ("" if s.get("complete", True) else " (timed out)"),
                f"{done.get('p50', 0):,.0f} / {done.get('p99', 0):,.0f}",
                f"{s['handshakes_seconds'] * 1e3:,.0f}",
                f"{quiet / 1e6:,.0f}{_range(s.get('cpu_ms_range'))}",
                f"{quiet / s['n'] / 1e3:,.0f}",
                f"{s.get('busy', busy(s)) * 100:.0f}%",
                "—" if redis is None else f"{redis / 1e6:,.0f}",
                retried(s),
            ]
        )
    header = ["storm", "backend", "clients", "missed each", "all done in (ms)"]
    header += ["per client p50 / p99 (ms)", "last handshake (ms)", "server CPU (ms)"]
    header += ["server µs/client", "server busy", "redis-server CPU (ms)"]
    header += ["clients that had to reconnect"]
    return table(header, rows)


def storm_memory_table(storms: list[dict[str, Any]]) -> str:
    """Server memory around each storm, and what the clients received."""
    rows = []
    for s in storms:
        if "error" in s:
            continue
        mib = [f"{s[k] / 2**20:.1f}" for k in ("rss_connected", "rss_before", "rss_peak")]
        low, high = s["replayed_min"], s["replayed_max"]
        rows.append(
            [
                s["label"],
                s["backend"],
                *mib,
                f"{(s['rss_peak'] - s['rss_before']) / 2**20:+.1f}",
                str(low) if low == high else f"{low} to {high}",
                verified(s),
            ]
        )
    header = ["storm", "backend", "RSS, clients connected before (MiB)", "RSS before storm"]
    header += ["peak RSS in storm", "peak over before", "replayed per client", "verified"]
    return table(header, rows)


def busy(s: dict[str, Any]) -> float:
    """The server's share of a CPU from the start of a storm to its last client done."""
    return float(s["cpu_ns"].get("server", 0) / 1e9 / max(s["seconds"], 1e-9))


def _range(bounds: list[float] | None) -> str:
    """`` (low to high)`` over the repetitions of a storm, or nothing for one."""
    if not bounds or bounds[0] == bounds[1]:
        return ""
    return f" ({bounds[0]:,.0f} to {bounds[1]:,.0f})"


def retried(s: dict[str, Any], bold: bool = True) -> str:
    """How many clients had to come back, and why their earlier attempts ended."""
    if not s.get("retried"):
        return "none"
    why = ", ".join(f"{reason} x{count:,}" for reason, count in s["lost"].items())
    count = f"{s['retried']:,}"
    return f"{f'**{count}**' if bold else count} ({why})"


def verified(s: dict[str, Any]) -> str:
    if "error" in s:
        return "**FAILED**"
    n = s.get("n_all", s["n"])
    bad = s["error_count"] + (n - s["live_ok"])
    if bad == 0:
        return f"all {n:,} ok"
    return f"**FAILED: {s['error_count']:,} wrong, {n - s['live_ok']:,} live not ok**"


def storm_checks(storms: list[dict[str, Any]]) -> list[Target]:
    out = []
    for s in storms:
        name = f"storm ({s['label']}, {s['backend']}): every client"
        if s.get("kind") == "resume":
            goal = "recovered: true, exactly the missed messages in order, then live"
        else:
            goal = "connected (welcomed), then live with no gap"
        if "error" in s:
            out.append(Target(name, goal, s["error"], False))
            continue
        n = s.get("n_all", s["n"])
        bad = s["error_count"] + (n - s["live_ok"])
        reps = s.get("reps", 1)
        measured = f"{s['ok']:,} of {n:,} ok, {s['live_ok']:,} got the live message next"
        if reps > 1:
            measured += f" (over {reps} storms of {s['n']:,})"
        if s.get("retried"):
            measured += (
                f"; only {s['first_try_ok']:,} on their first attempt, "
                f"{s['retried']:,} had to reconnect: {retried(s, bold=False)}"
            )
        if s["errors"]:
            measured += "; " + "; ".join(s["errors"][:3])
        out.append(Target(name, goal, measured, bad == 0))
    return out


def render(
    costs: list[Cost],
    storms: list[dict[str, Any]],
    items: list[Target],
    checks: list[Target],
    *,
    plan: RecoveryPlan,
    when: str,
    command: str,
    seconds: float,
    machine: dict[str, str],
    versions: dict[str, str],
    notes: list[str],
    ws: str,
) -> str:
    mode = "quick" if plan.quick else "full"
    ns = ", ".join(f"{n:,}" for n in plan.burst_ns)
    setup = [
        f"- history cost: N = {ns} clients per server, bursts of M = {plan.burst_m} messages "
        f"of 100 B (the M used at each N is in the table), {plan.rounds} rounds of one burst "
        "per variant (each backend's variants back to back, the order reversed every other "
        "round), every variant's server up and connected at once; medians over the rounds",
        f"- reconnect storm: {plan.storm_n:,} clients, {plan.storm_warm} live messages seen, "
        f"all disconnect, {plan.storm_missed} messages published, all reconnect at once; "
        f"one fresh server per storm; every storm {plan.storm_reps} time(s), taking turns; "
        "figures of the storm with the median server CPU, ranges over all of them, checks of "
        "every one",
        f"- server: uvicorn, 1 worker, uvloop, httptools, ws={ws}, pings off",
        "- clients: picows in a separate process (bursts: the fan-out load generator; storms: "
        "an asyncio client parsing and checking every frame)",
        "- history: `HistoryLimits()` defaults (100 messages and 300 s per channel)",
    ]
    targets = table(
        ["target", "goal", "measured", "result"],
        ([t.name, t.goal, t.measured, f"**{t.verdict}**"] for t in items),
    )
    check_table = table(
        ["check", "goal", "measured", "result"],
        ([t.name, t.goal, t.measured, "**ok**" if t.met else "**FAILED**"] for t in checks),
    )
    parts = [
        "# Recovery benchmark results",
        f"{when} — {mode} run (`{command}`), {seconds:.0f} s. How to read this: "
        "[README.md](README.md#history-and-recovery). Fan-out results: [RESULTS.md](RESULTS.md).",
        "## Machine",
        "\n".join(f"- {k}: {v}" for k, v in machine.items()),
        "## Software",
        ", ".join(f"{k} {v}" for k, v in versions.items()),
        "## Workloads",
        "\n".join(setup),
        "## Targets",
        targets,
        "## History cost (bursts)",
        cost_table(costs) if costs else "Not run.",
        "## Reconnect storm",
        storm_table(storms) if storms else "Not run.",
        "### Memory and what the clients received",
        storm_memory_table(storms) if storms else "Not run.",
        "## Storm checks",
        check_table if checks else "Not run.",
        "## Failures, skips and notes",
        "\n".join(f"- {n}" for n in notes) or "None.",
    ]
    return "\n\n".join(parts) + "\n"


# -- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recovery", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer rounds and storms, ~1 minute")
    p.add_argument("--large", action="store_true", help="also the history cost at N=5,000")
    p.add_argument("--no-redis", action="store_true", help="memory backend only")
    p.add_argument("--parts", default="cost,storm", help="cost, storm or both (default)")
    p.add_argument("--out", type=Path, default=HERE / "RECOVERY.md", help="markdown report")
    p.add_argument("--json", type=Path, help="also dump the raw results as JSON")
    p.add_argument("--ws", default=DEFAULT_WS, help="uvicorn WebSocket implementation")
    p.add_argument("--redis-server", default="redis-server", help="redis-server binary")
    p.add_argument("--storm-client", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _terminate(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


async def run_all(
    args: argparse.Namespace, plan: RecoveryPlan, workdir: Path, redis: bool, notes: list[str]
) -> tuple[list[Cost], list[dict[str, Any]]]:
    parts = {p.strip() for p in args.parts.split(",")}
    costs: list[Cost] = []
    storms: list[dict[str, Any]] = []
    if "cost" in parts:
        log(f"history cost: N={plan.burst_ns}, {plan.rounds} rounds")
        errors: dict[str, str] = {}
        work = measure_cost(
            cost_systems(redis),
            plan,
            workdir,
            ws=args.ws,
            redis_bin=args.redis_server,
            errors=errors,
        )
        try:
            costs = await asyncio.wait_for(work, plan.part_limit)
        except TimeoutError:
            notes.append(f"history cost: stopped after {plan.part_limit:.0f}s, not reported")
        notes.extend(f"history cost, {k}: {v}" for k, v in errors.items())
    if "storm" in parts:
        runs = [(STORM_KINDS[k], False) for k in plan.storm_kinds]
        if redis:
            runs += [(STORM_KINDS[k], True) for k in plan.storm_kinds if k != "fresh"]
        done: dict[tuple[str, bool], list[dict[str, Any]]] = {}
        for rep in range(plan.storm_reps):  # every storm once, then again: side by side
            for kind, on_redis in runs:
                backend = "redis" if on_redis else "memory"
                log(f"storm {rep + 1}/{plan.storm_reps}: {kind.label} ({backend})")
                result = await one_storm(args, plan, workdir, kind, on_redis)
                done.setdefault((kind.name, on_redis), []).append(result)
        storms = [merge_storms(results) for results in done.values()]
    return costs, storms


async def one_storm(
    args: argparse.Namespace, plan: RecoveryPlan, workdir: Path, kind: StormKind, redis: bool
) -> dict[str, Any]:
    """One storm, its failure (if any) as a result; logged either way."""
    started = time.monotonic()
    try:
        result = await run_storm(
            kind, redis, plan, workdir, ws=args.ws, redis_bin=args.redis_server
        )
    except Exception as exc:
        result = {
            "kind": kind.name,
            "label": kind.label,
            "backend": "redis" if redis else "memory",
            "error": f"{type(exc).__name__}: {exc}",
        }
        log(f"  FAILED: {result['error']}")
        return result
    log(
        f"  {result['seconds'] * 1e3:,.0f} ms, server {result['cpu_quiet_ns']['server'] / 1e6:,.0f}"
        f" ms CPU, {result['ok']:,}/{result['n']:,} ok, in {time.monotonic() - started:.0f}s"
    )
    if result["error_count"] or result["live_ok"] != result["n"]:
        log(f"  VERIFICATION FAILED: {result['errors']}")
    return result


def merge_storms(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The repetitions of one storm: the figures of the median one (by server CPU), the range
    of server CPU and of time over all, and the checks of every one of them summed."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[0]
    good.sort(key=lambda r: r["cpu_quiet_ns"]["server"])
    merged = dict(good[len(good) // 2])
    merged["busy"] = busy(merged)
    cpus = [r["cpu_quiet_ns"]["server"] / 1e6 for r in good]
    times = [r["seconds"] * 1e3 for r in good]
    lost: Counter[str] = Counter()
    for r in good:
        lost.update(r["lost"])
    failed = [r["error"] for r in runs if "error" in r]
    merged.update(
        reps=len(runs),
        cpu_ms_range=[min(cpus), max(cpus)],
        seconds_ms_range=[min(times), max(times)],
        seconds=_median(times) / 1e3 if times else 0.0,
        ok=sum(r["ok"] for r in good),
        n_all=sum(r["n"] for r in good) + merged["n"] * len(failed),
        live_ok=sum(r["live_ok"] for r in good),
        first_try_ok=sum(r["first_try_ok"] for r in good),
        retried=sum(r["retried"] for r in good),
        lost=dict(lost.most_common()),
        error_count=sum(r["error_count"] for r in good) + merged["n"] * len(failed),
        errors=[*failed, *(e for r in good for e in r["errors"])][:10],
    )
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.storm_client:
        return storm_client_main(args.storm_client)
    plan = QUICK if args.quick else FULL
    if args.large:
        plan = dataclasses.replace(
            plan, burst_ns=(*plan.burst_ns, 5000), part_limit=2 * plan.part_limit
        )
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _terminate)
    notes: list[str] = []
    missing = None if args.no_redis else redis_history_missing(args.redis_server)
    redis = not args.no_redis and missing is None
    if missing:
        notes.append(f"Redis variants not run: {missing}")
    elif args.no_redis:
        notes.append("Redis variants not run (--no-redis)")
    workdir = Path(tempfile.mkdtemp(prefix="asgi-groups-recovery-"))
    machine = meta.machine()
    started = time.monotonic()
    log(f"{'quick' if plan.quick else 'full'} run; logs in {workdir}")
    try:
        costs, storms = asyncio.run(run_all(args, plan, workdir, redis, notes))
    except KeyboardInterrupt:
        log("interrupted: every child process was stopped; nothing written")
        return 130
    finally:
        kill_all()
    seconds = time.monotonic() - started
    load = os.getloadavg()
    machine["load average at end"] = f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    items = cost_targets(costs, redis) if costs else []
    checks = storm_checks(storms)
    versions = {**meta.versions(args.redis_server), "asgi_groups source": source_state()}
    command = " ".join(["python -m benchmarks.recovery", *(argv or sys.argv[1:])])
    text = render(
        costs,
        storms,
        items,
        checks,
        plan=plan,
        when=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=command,
        seconds=seconds,
        machine=machine,
        versions=versions,
        notes=notes,
        ws=args.ws,
    )
    args.out.write_text(text)
    if args.json:
        dump = {"costs": [dataclasses.asdict(c) for c in costs], "storms": storms}
        args.json.write_text(json.dumps(dump, indent=1))
    print(cost_table(costs) if costs else "history cost: not run")
    print()
    print(storm_table(storms) if storms else "storm: not run")
    print()
    print(storm_memory_table(storms) if storms else "")
    print()
    for t in [*items, *checks]:
        print(f"{'ok' if t.met else 'NOT OK'}: {t.name}: {t.measured} ({t.goal}) {t.verdict}")
    failed = [c for c in checks if not c.met]
    if failed:
        log(f"STORM VERIFICATION FAILED for {len(failed)} storm(s); logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"wrote {args.out} in {seconds:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
