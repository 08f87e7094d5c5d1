"""The goals asgi_groups is held to, evaluated against a run's results.

Each target compares asgi_groups with the no-ASGI limit, the raw ASGI loop (also under each
server of ``--servers``) or the best peer; a target whose inputs failed or were not run is
reported as "not measured", never as met.
"""

from __future__ import annotations

from dataclasses import dataclass

from .results import SystemResult
from .systems import variant

Results = dict[str, SystemResult]
NA = "—"


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None

    @property
    def verdict(self) -> str:
        return {True: "met", False: "missed", None: "not measured"}[self.met]


def burst_figure(results: Results, name: str, n: int, attr: str = "server_us") -> float | None:
    """A figure of ``name``'s burst at ``n`` (None when not run or incomplete)."""
    r = results.get(name)
    b = r.burst(n) if r is not None else None
    # a burst that never completed has no meaningful cost per delivery
    return None if b is None or not b.complete else float(getattr(b, attr))


def _ratio(name: str, goal: str, a: float | None, b: float | None, ok: float, le: bool) -> Target:
    """``a / b`` against ``ok`` (at most ``ok`` when ``le``, else at least)."""
    if a is None or b is None or b <= 0:
        return Target(name, goal, NA, None)
    ratio = a / b
    return Target(
        name, goal, f"{ratio:.2f}x ({a:,.1f} vs {b:,.1f})", ratio <= ok if le else ratio >= ok
    )


def _peer_factor(results: Results, n: int, family: str, label: str, factor: float) -> Target:
    """The best peer of ``family`` must spend ``factor`` times asgi_groups' CPU per delivery."""
    name = f"burst N={n}: {label} (best) CPU/delivery vs asgi_groups"
    goal = f"≥ {factor:g}x"
    mine = burst_figure(results, "asgi_groups", n, "server_us")
    peers = [
        (r.label, v)
        for r in results.values()
        if r.family == family and (v := burst_figure(results, r.name, n, "server_us")) is not None
    ]
    if mine is None or mine <= 0 or not peers:
        return Target(name, goal, NA, None)
    label_best, best = min(peers, key=lambda p: p[1])
    ratio = best / mine
    return Target(name, goal, f"{ratio:.1f}x ({label_best}: {best:,.1f} µs)", ratio >= factor)


def burst_targets(results: Results, n: int) -> list[Target]:
    native_us = burst_figure(results, "native", n, "server_us")
    native_rate = burst_figure(results, "native", n, "deliveries_per_s")
    return [
        _ratio(
            f"burst N={n}: asgi_groups server CPU/delivery vs no-ASGI limit",
            "≤ 1.15x",
            burst_figure(results, "asgi_groups", n, "server_us"),
            native_us,
            1.15,
            le=True,
        ),
        _ratio(
            f"burst N={n}: asgi_groups server CPU/delivery vs raw ASGI send loop",
            "≤ 1.05x",
            burst_figure(results, "asgi_groups", n, "server_us"),
            burst_figure(results, "raw-asgi", n, "server_us"),
            1.05,
            le=True,
        ),
        _ratio(
            f"burst N={n}: asgi_groups deliveries/s vs no-ASGI limit",
            "≥ 0.85x",
            burst_figure(results, "asgi_groups", n, "deliveries_per_s"),
            native_rate,
            0.85,
            le=False,
        ),
        _ratio(
            f"burst N={n}: asgi_groups Redis server CPU/delivery vs no-ASGI limit",
            "≤ 1.3x",
            burst_figure(results, "asgi_groups-redis", n, "server_us"),
            native_us,
            1.3,
            le=True,
        ),
        _peer_factor(results, n, "channels", "Channels", 20.0),
        _peer_factor(results, n, "socketio", "python-socketio", 6.0),
    ]


def _p99(r: SystemResult | None, external: bool = False) -> float | None:
    s = None if r is None else (r.steady_external if external else r.steady)
    return None if s is None else s.latency_ms.get("p99")


def steady_target(results: Results) -> Target:
    name, goal = "steady p99 (server publishes): asgi_groups vs every peer", "lower than all"
    mine = _p99(results.get("asgi_groups"))
    peers = [
        (r.label, p)
        for r in results.values()
        if r.family in ("channels", "socketio") and (p := _p99(r)) is not None
    ]
    if mine is None or not peers:
        return Target(name, goal, NA, None)
    label, best = min(peers, key=lambda p: p[1])
    return Target(name, goal, f"{mine:.2f} ms vs best peer {best:.2f} ms ({label})", mine < best)


def memory_target(results: Results) -> Target:
    name, goal = "memory per idle connection over the raw ASGI app", "≤ 1 KiB"
    mine, raw = results.get("asgi_groups"), results.get("raw-asgi")
    if mine is None or raw is None or mine.memory is None or raw.memory is None:
        return Target(name, goal, NA, None)
    a, b = mine.memory.per_connection, raw.memory.per_connection
    return Target(name, goal, f"{a - b:+,.0f} B ({a:,.0f} vs {b:,.0f})", a - b <= 1024)


def external_target(results: Results) -> Target:
    name, goal = "steady p99 with an external publisher via Redis (asgi_groups)", "≤ 25 ms"
    p99 = _p99(results.get("asgi_groups-redis"), external=True)
    if p99 is None:
        return Target(name, goal, NA, None)
    return Target(name, goal, f"{p99:.2f} ms", p99 <= 25.0)


def slow_target(results: Results) -> Target:
    name, goal = "slow reader: deliveries/s to the other clients (asgi_groups)", "≥ 0.9x"
    r = results.get("asgi_groups")
    if r is None or r.slow is None:
        return Target(name, goal, NA, None)
    return Target(name, goal, f"{r.slow.ratio:.2f}x", r.slow.ratio >= 0.9)


#: Every server of the matrix: asgi_groups' CPU per delivery over that server's raw ASGI loop.
SERVER_RAW_RATIO = 1.10


def server_targets(matrix: Results, servers: tuple[str, ...], n: int) -> list[Target]:
    """Per server of ``--servers``: asgi_groups within ``SERVER_RAW_RATIO`` of its raw loop."""
    return [
        _ratio(
            f"burst N={n}: asgi_groups server CPU/delivery vs {server}'s raw ASGI loop",
            f"≤ {SERVER_RAW_RATIO:.2f}x",
            burst_figure(matrix, variant("asgi_groups", server), n),
            burst_figure(matrix, variant("raw-asgi", server), n),
            SERVER_RAW_RATIO,
            le=True,
        )
        for server in servers
    ]


def evaluate(
    results: Results,
    burst_ns: tuple[int, ...],
    matrix: Results | None = None,
    servers: tuple[str, ...] = (),
) -> list[Target]:
    """Every target; ``matrix``: the results of ``--servers`` (keyed by ``systems.variant``)."""
    out: list[Target] = []
    for n in burst_ns:
        out.extend(burst_targets(results, n))
    out += [steady_target(results), memory_target(results), external_target(results)]
    out.append(slow_target(results))
    for n in burst_ns:
        out.extend(server_targets(matrix or {}, servers, n))
    return out
