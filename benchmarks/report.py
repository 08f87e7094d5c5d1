"""RESULTS.md: the summary, targets and per-workload tables of one run, as markdown."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from .plan import Plan
from .results import SystemResult
from .systems import variant
from .targets import SERVER_RAW_RATIO, Target, burst_figure

NA = "—"
Results = dict[str, SystemResult]
#: History and recovery have their own report, written by ``python -m benchmarks.recovery``.
RECOVERY_LINK = (
    "History and recovery (cost of history per delivery, reconnect storms): "
    "[RECOVERY.md](RECOVERY.md), from `python -m benchmarks.recovery`."
)
#: Storms, small rooms, servers and the cost of metrics are in PERFORMANCE.md, from their own runs.
PERFORMANCE_LINK = (
    "Reconnect storms, small rooms and direct messages, every server, and the cost of metrics: "
    "[PERFORMANCE.md](PERFORMANCE.md), from `python -m benchmarks.storm`, `benchmarks.rooms` "
    "and `benchmarks.metrics`."
)


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def num(value: float | None, fmt: str = ",.0f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{value:{fmt}}{suffix}"


def ratio(a: float | None, b: float | None) -> str:
    return NA if a is None or not b else f"{a / b:.2f}x"


def status(r: SystemResult) -> str:
    if r.skipped:
        return f"skipped: {r.skipped}"
    if r.errors:
        return "failed: " + "; ".join(f"{k}: {v}" for k, v in r.errors.items())
    return "ok"


def summary(results: Results, plan: Plan) -> str:
    n = max(plan.burst_ns)
    native = results.get("native")
    limit = native.burst(n) if native else None
    rows = []
    for r in results.values():
        b = r.burst(n)
        lat = r.steady.latency_ms if r.steady else {}
        rows.append(
            [
                r.label,
                num(b.deliveries_per_s if b else None),
                num(b.server_us if b else None, ".2f"),
                ratio(b.server_us if b else None, limit.server_us if limit else None),
                num(lat.get("p50"), ".2f"),
                num(lat.get("p99"), ".2f"),
                num(r.memory.per_connection if r.memory else None),
                "ok" if not r.errors and not r.skipped else status(r)[:60],
            ]
        )
    header = [
        "system",
        f"deliveries/s (N={n})",
        "server µs/delivery",
        "CPU vs no-ASGI limit",
        "steady p50 ms",
        "steady p99 ms",
        "bytes/connection",
        "status",
    ]
    return table(header, rows)


#: How ``--servers`` runs each server (RESULTS.md's workload settings).
SERVER_SETTINGS = (
    "one worker each, on uvloop: uvicorn-websockets-sansio and uvicorn-wsproto are uvicorn "
    "(httptools) with that WebSocket implementation, hypercorn its asyncio worker, granian its "
    "ASGI interface as an embedded server (the worker in the server process); "
    "asgi_groups.servers' options (listening socket with TCP_USER_TIMEOUT, frame limit where "
    "the server has one), keepalive pings off"
)


def bursts(results: Results, plan: Plan, native: SystemResult | None = None) -> str:
    """Every burst of ``results``; ratios against ``native`` (default: the one in ``results``)."""
    native = native or results.get("native")
    rows = []
    for n in plan.burst_ns:
        limit = native.burst(n) if native else None
        for r in results.values():
            b = r.burst(n)
            if b is None:
                continue
            rows.append(
                [
                    r.label,
                    str(n),
                    str(b.m),
                    num(b.deliveries_per_s),
                    ratio(b.deliveries_per_s, limit.deliveries_per_s if limit else None),
                    num(b.server_us, ".2f"),
                    ratio(b.server_us, limit.server_us if limit else None),
                    num(b.redis_us, ".2f"),
                    num(b.server_us * b.deliveries_per_s / 1e4, ".0f", "%"),
                    num(b.client_cpu * 100, ".0f", "%"),
                    "yes" if b.complete else "NO",
                ]
            )
    header = ["system", "N", "M", "deliveries/s", "rate vs limit", "server µs/delivery"]
    header += ["CPU vs limit", "redis-server µs/delivery", "server busy", "client CPU"]
    header += ["complete"]
    return table(header, rows)


def latency(results: Results) -> str:
    rows = []
    for r in results.values():
        for s in (r.steady, r.steady_external):
            if s is None:
                continue
            lat = s.latency_ms
            rows.append(
                [
                    r.label,
                    "external (Redis)" if s.external else "in the server",
                    *(num(lat.get(k), ".2f") for k in ("p50", "p90", "p99", "p99.9", "max")),
                    f"{s.received:,}/{s.expected:,}",
                ]
            )
    header = ["system", "publisher", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"]
    return table([*header, "delivered"], rows)


def slow(results: Results) -> str:
    rows = []
    for r in results.values():
        s = r.slow
        if s is None:
            continue
        note = "" if s.complete else "others stalled (burst never completed)"
        rows.append(
            [
                r.label,
                str(s.m),
                num(s.without),
                num(s.with_slow),
                f"{s.ratio:.2f}x",
                num(s.stall.get("requested", 0) / 1024, ",.0f", " KiB"),
                note,
            ]
        )
    header = ["system", "M", "deliveries/s, all reading", "with 1 stalled reader", "ratio"]
    return table([*header, "filler sent to it", "note"], rows)


def memory(results: Results) -> str:
    raw = results.get("raw-asgi")
    raw_per = raw.memory.per_connection if raw and raw.memory else None
    rows = []
    for r in results.values():
        m = r.memory
        if m is None:
            continue
        over = None if raw_per is None else m.per_connection - raw_per
        rows.append(
            [
                r.label,
                str(m.n),
                num(m.rss_idle / 2**20, ".1f"),
                num(m.rss_loaded / 2**20, ".1f"),
                num(m.per_connection),
                num(over, "+,.0f"),
            ]
        )
    header = ["system", "idle connections", "RSS at 0 (MiB)", "RSS loaded (MiB)"]
    return table([*header, "bytes/connection", "vs raw ASGI"], rows)


def servers(results: Results, matrix: Results, names: Sequence[str], plan: Plan) -> str:
    """The server matrix: per server and N, raw ASGI loop and asgi_groups CPU per delivery, their
    ratio, each against the native limit of the same run; then the recommended server."""
    coalesce = any(r.name.startswith("asgi_groups-coalesce@") for r in matrix.values())
    rows = []
    for n in plan.burst_ns:
        native = burst_figure(results, "native", n)
        for server in names:
            raw = burst_figure(matrix, variant("raw-asgi", server), n)
            mine = burst_figure(matrix, variant("asgi_groups", server), n)
            row = [server, f"{n:,}", num(native, ".2f"), num(raw, ".2f"), num(mine, ".2f")]
            row += [ratio(mine, raw), ratio(raw, native), ratio(mine, native)]
            if coalesce:
                merged = burst_figure(matrix, variant("asgi_groups-coalesce", server), n)
                row += [num(merged, ".2f"), ratio(merged, native)]
            rows.append(row)
    header = ["server", "N", "native µs/delivery", "raw ASGI µs/delivery"]
    header += ["asgi_groups µs/delivery", f"asgi_groups / raw (≤ {SERVER_RAW_RATIO:.2f}x)"]
    header += ["raw vs native", "asgi_groups vs native"]
    if coalesce:
        header += ["coalesce=16 µs/delivery", "coalesce vs native"]
    return table(header, rows) + "\n\n" + recommended(results, matrix, names, max(plan.burst_ns))


def recommended(results: Results, matrix: Results, names: Sequence[str], n: int) -> str:
    """The server with the lowest asgi_groups CPU per delivery at ``n``."""
    measured = [
        (us, server)
        for server in names
        if (us := burst_figure(matrix, variant("asgi_groups", server), n)) is not None
    ]
    if not measured:
        return f"Recommended server: none measured at N={n:,}."
    us, server = min(measured)
    native = burst_figure(results, "native", n)
    return (
        f"Recommended server: **{server}** (lowest asgi_groups CPU per delivery at N={n:,}): "
        f"{us:.2f} µs/delivery, {ratio(us, native)} the native limit ({num(native, '.2f')} µs)."
    )


def server_parts(results: Results, matrix: Results, names: Sequence[str], plan: Plan) -> list[str]:
    """The "Servers" section: the matrix, then each of its bursts in full."""
    return [
        "## Servers",
        "The burst workload of the raw ASGI loop and asgi_groups under each ASGI server, "
        "in the same run; native is the no-ASGI limit above (picows).",
        servers(results, matrix, names, plan),
        "### Bursts per server",
        bursts(matrix, plan, native=results.get("native")),
    ]


def targets(items: list[Target]) -> str:
    return table(
        ["target", "goal", "measured", "result"],
        ([t.name, t.goal, t.measured, f"**{t.verdict}**"] for t in items),
    )


def problems(results: Results) -> str:
    lines = [f"- **{r.label}**: {status(r)}" for r in results.values() if r.skipped or r.errors]
    lines += [f"- **{r.label}**: {note}" for r in results.values() for note in r.notes]
    return "\n".join(lines) or "None."


def render(
    results: Results,
    plan: Plan,
    items: list[Target],
    *,
    when: str,
    command: str,
    machine: dict[str, str],
    versions: dict[str, str],
    settings: dict[str, str],
    seconds: float,
    matrix: Results | None = None,
    server_names: Sequence[str] = (),
) -> str:
    """RESULTS.md; ``matrix``/``server_names``: the ``--servers`` results (a "Servers" section)."""
    mode = "quick" if plan.quick else "full"
    matrix = matrix or {}
    setup = [
        f"- bursts: N = {', '.join(f'{n:,}' for n in plan.burst_ns)} connections, M = "
        f"{plan.burst_m} messages of {plan.size} B (fewer when a system would exceed "
        f"{plan.burst_budget:g} s per burst; the M used is in the table), median of {plan.reps}",
        f"- steady: {plan.steady_n:,} connections, {plan.steady_rate:g} messages/s for "
        f"{plan.steady_seconds:g} s",
        f"- memory: {plan.memory_n:,} idle connections; slow reader: 1 of {plan.slow_n:,}",
        *(f"- {k}: {v}" for k, v in settings.items()),
    ]
    parts = [
        "# Fan-out benchmark results",
        f"{when} — {mode} run (`{command}`), {seconds:.0f} s. How to read this: "
        "[README.md](README.md).",
        RECOVERY_LINK,
        PERFORMANCE_LINK,
        "## Machine",
        "\n".join(f"- {k}: {v}" for k, v in machine.items()),
        "## Software",
        ", ".join(f"{k} {v}" for k, v in versions.items()),
        "## Workloads",
        "\n".join(setup),
        "## Summary",
        summary(results, plan),
        "## Targets",
        targets(items),
        "## Bursts",
        bursts(results, plan),
        *(server_parts(results, matrix, server_names, plan) if server_names else []),
        "## Steady latency",
        latency(results),
        "## Slow reader",
        slow(results),
        "## Memory",
        memory(results),
        "## Failures, skips and notes",
        problems({**results, **matrix}),
        "![server CPU per delivery](fanout.png)",
    ]
    return "\n\n".join(parts) + "\n"
