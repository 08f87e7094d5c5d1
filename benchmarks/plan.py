"""Workload sizes for a full run and for ``--quick``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Plan:
    """Every size and time bound of one run.

    ``burst_budget``: wall-clock seconds one burst repetition may take; a system too slow to
    do ``burst_m`` messages to ``n`` clients in that time gets a smaller M (never below
    ``min_m``; the M used is reported). Per-delivery figures do not depend on M.
    ``system_limit``: wall-clock cap for all of one system's workloads (what is done by
    then is kept, the rest is reported as failed); ``run_budget``: the same for the whole run,
    shared out so that every system still gets a turn. Together they bound the run's length.
    ``slow_peers`` / ``external_when_saturated``: a quick run skips the slow-reader workload
    for peers, and the external-publisher run for a peer that could not keep up with the
    in-server publisher (its server would have to be restarted first).
    """

    quick: bool
    burst_ns: tuple[int, ...]
    burst_m: int
    min_m: int
    burst_budget: float
    reps: int
    size: int
    steady_n: int
    steady_rate: float
    steady_seconds: float
    steady_drain: float
    memory_n: int
    slow_n: int
    idle_seconds: float
    system_limit: float
    run_budget: float
    slow_peers: bool
    external_when_saturated: bool

    @property
    def max_n(self) -> int:
        return max((*self.burst_ns, self.memory_n))


FULL = Plan(
    quick=False,
    burst_ns=(1000, 5000),
    burst_m=50,
    min_m=2,
    burst_budget=1.5,
    reps=3,
    size=100,
    steady_n=1000,
    steady_rate=100.0,
    steady_seconds=10.0,
    steady_drain=3.0,
    memory_n=5000,
    slow_n=1000,
    idle_seconds=0.5,
    system_limit=120.0,
    run_budget=580.0,
    slow_peers=True,
    external_when_saturated=True,
)

QUICK = Plan(
    quick=True,
    burst_ns=(500,),
    burst_m=20,
    min_m=2,
    burst_budget=0.5,
    reps=3,
    size=100,
    steady_n=1000,
    steady_rate=100.0,
    steady_seconds=3.0,
    steady_drain=1.0,
    memory_n=1000,
    slow_n=1000,
    idle_seconds=0.3,
    system_limit=30.0,
    run_budget=150.0,
    slow_peers=False,
    external_when_saturated=False,
)
