"""What a run measures, per system: plain dataclasses, JSON-able with ``dataclasses.asdict``."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Burst:
    """N connections, one trigger, M publishes: the median over the repetitions."""

    n: int
    m: int
    deliveries_per_s: float
    server_us: float
    redis_us: float | None
    client_cpu: float
    complete: bool
    reps: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class Steady:
    """Publish→receive latency at a fixed publish rate."""

    n: int
    rate: float
    seconds: float
    external: bool
    expected: int
    received: int
    latency_ms: dict[str, float]


@dataclass(slots=True)
class Memory:
    n: int
    rss_idle: int
    rss_loaded: int

    @property
    def per_connection(self) -> float:
        return (self.rss_loaded - self.rss_idle) / self.n


@dataclass(slots=True)
class SlowReader:
    """Deliveries/s to the other clients with and without one client that stopped reading."""

    n: int
    m: int
    without: float
    with_slow: float
    complete: bool
    stall: dict[str, int]

    @property
    def ratio(self) -> float:
        return self.with_slow / self.without if self.without else 0.0


@dataclass(slots=True)
class SystemResult:
    name: str
    label: str
    family: str
    skipped: str | None = None
    bursts: dict[int, Burst] = field(default_factory=dict)
    steady: Steady | None = None
    steady_external: Steady | None = None
    memory: Memory | None = None
    slow: SlowReader | None = None
    errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def burst(self, n: int) -> Burst | None:
        return self.bursts.get(n)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
