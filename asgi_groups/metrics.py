"""Prometheus metrics of a registry, read at scrape time (``pip install 'asgi-groups[metrics]'``).

Nothing is counted for Prometheus on the delivery path: a scrape reads the registry's own
counters (:meth:`Registry.stats` and the plain counters beside it) and turns them into metric
families. ``metrics_app(registry)`` is an ASGI app to mount at ``/metrics``.

With ``prometheus_client``'s multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set, e.g. several
uvicorn workers), each process mirrors its counters into multiprocess metric objects every
``MIRROR_INTERVAL`` seconds (and on each scrape it serves), so that any worker's ``/metrics``
gives the totals of all of them. Every name starts with ``asgi_groups_``; label values are
bounded (kinds, reasons, close codes; never a user id or a group name).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .health import Endpoint, Periodic, StatsReporter, livez, readyz
from .registry import LatencyHistogram, Registry
from .types import ASGIApp, Receive, Scope, Send

__all__ = [
    "MIRROR_INTERVAL",
    "PREFIX",
    "Family",
    "Mirror",
    "RegistryCollector",
    "families",
    "metrics_app",
    "multiprocess_enabled",
    "operations_routes",
]

logger = logging.getLogger("asgi_groups.metrics")

#: Every metric name starts with this.
PREFIX = "asgi_groups_"
#: Seconds between two mirrorings of a process's counters in multiprocess mode.
MIRROR_INTERVAL = 1.0
#: How a gauge of one process combines with the others' in multiprocess mode.
GaugeMode = Literal["livesum", "livemin", "livemax"]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric, as read from a registry: its samples keyed by label values."""

    name: str  # without the prefix, and without ``_total`` for a counter
    kind: Literal["counter", "gauge"]
    help: str
    samples: dict[tuple[str, ...], float]
    labels: tuple[str, ...] = ()
    mode: GaugeMode = "livesum"


def _one(value: float) -> dict[tuple[str, ...], float]:
    return {(): float(value)}


def _by(counts: dict[Any, int]) -> dict[tuple[str, ...], float]:
    return {("none" if key is None else str(key),): float(n) for key, n in counts.items()}


def families(registry: Registry) -> list[Family]:
    """Every metric of ``registry`` but the latency histogram, read now (cheap: counters)."""
    stats = registry.stats()
    backend = stats.backend
    depth = registry.queue_depth()
    out = [
        Family("connections", "gauge", "Open WebSocket connections.", _one(stats.connections)),
        Family("users", "gauge", "Users with an open connection.", _one(stats.users)),
        Family("groups", "gauge", "Groups with a local connection.", _one(stats.groups)),
        Family(
            "messages_published",
            "counter",
            "Messages published through this process, by kind (group, user, broadcast).",
            _by(registry.published_by_kind),
            ("kind",),
        ),
        Family(
            "deliveries",
            "counter",
            "Messages handed to local connections (written or queued).",
            _one(stats.deliveries),
        ),
        Family(
            "dropped",
            "counter",
            "Messages dropped, by reason (queue_full: drop_oldest made room).",
            {("queue_full",): float(stats.dropped)},
            ("reason",),
        ),
        Family(
            "slow_closes",
            "counter",
            "Connections closed with 1013 because their outbound queue overflowed.",
            _one(stats.slow_closed),
        ),
        Family(
            "closes",
            "counter",
            "Connections closed, by close code (none: the client or its transport ended it).",
            _by(registry.closes),
            ("code",),
        ),
        Family(
            "refused_handshakes",
            "counter",
            "WebSocket handshakes refused, by reason (origin, auth, limit, error).",
            _by(registry.refused_handshakes),
            ("reason",),
        ),
        Family(
            "refused_frames",
            "counter",
            "Inbound frames refused, by reason (invalid, too_large, rate_limited, forbidden, "
            "unknown_target).",
            _by(registry.refused_frames),
            ("reason",),
        ),
        Family(
            "backend_up",
            "gauge",
            "1 while the backend reaches its peers (always 1 in memory), else 0.",
            _one(0 if backend.get("down", False) else 1),
            mode="livemin",
        ),
        Family(
            "backend_reconnects",
            "counter",
            "Reconnections of the backend after an outage.",
            _one(backend.get("reconnects", 0)),
        ),
        Family(
            "backend_errors",
            "counter",
            "Backend errors (failed publishes, listener and presence errors).",
            _one(backend.get("errors", 0)),
        ),
        Family(
            "breaks",
            "counter",
            "Breaks in the backend survived (counted once repaired).",
            _one(stats.breaks),
        ),
        Family(
            "recoveries",
            "counter",
            "Connections after a break, by outcome (recovered: given what they missed; told: "
            "told they may have missed messages).",
            {("recovered",): float(stats.missed_recovered), ("told",): float(stats.missed_told)},
            ("outcome",),
        ),
        Family(
            "queue_depth_max",
            "gauge",
            "The deepest outbound queue now, in messages.",
            _one(depth),
            mode="livemax",
        ),
        Family(
            "queue_depth_peak",
            "gauge",
            "The deepest outbound queue seen at a scrape since start, in messages.",
            _one(registry.queue_peak),
            mode="livemax",
        ),
    ]
    if "published" in backend:
        out.append(
            Family(
                "backend_published",
                "counter",
                "Messages published to the backend.",
                _one(backend["published"]),
            )
        )
    if "received" in backend:
        out.append(
            Family(
                "backend_received",
                "counter",
                "Messages received from the backend.",
                _one(backend["received"]),
            )
        )
    history = backend.get("history") or {}
    if "messages" in history:
        out.append(
            Family(
                "history_messages", "gauge", "Messages kept in history.", _one(history["messages"])
            )
        )
        out.append(
            Family(
                "history_bytes", "gauge", "Bytes kept in history.", _one(history.get("bytes", 0))
            )
        )
    return out


#: The sampled histograms: (name, help, the registry's attribute holding it).
HISTOGRAMS = (
    (
        "publish_duration_seconds",
        "Duration of a publish call (sampled): encoding, the backend and, in memory, the local "
        "fan-out.",
        "publish_latency",
    ),
    (
        "delivery_latency_seconds",
        "From a publish until this process handed it to its own recipients (sampled; with "
        "Redis, through Redis and back).",
        "delivery_latency",
    ),
)


def _histogram(name: str, help_text: str, latency: LatencyHistogram) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip((*latency.bounds, float("inf")), latency.counts, strict=True):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
    return HistogramMetricFamily(PREFIX + name, help_text, buckets=buckets, sum_value=latency.sum)


class RegistryCollector(Collector):
    """A ``prometheus_client`` collector reading a registry at scrape time."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in families(self.registry):
            name = PREFIX + family.name
            metric: CounterMetricFamily | GaugeMetricFamily
            if family.kind == "counter":
                metric = CounterMetricFamily(name, family.help, labels=family.labels)
            else:
                metric = GaugeMetricFamily(name, family.help, labels=family.labels)
            for values, value in sorted(family.samples.items()):
                metric.add_metric(list(values), value)
            yield metric
        for name, help_text, attribute in HISTOGRAMS:
            yield _histogram(name, help_text, getattr(self.registry, attribute))


def multiprocess_enabled() -> bool:
    """True when ``prometheus_client`` runs in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Mirror(Periodic):
    """Copies a registry's counters into multiprocess metric objects (multiprocess mode).

    A registry companion: it mirrors every ``interval`` seconds while the registry runs, so
    that a scrape served by any worker sees every worker's numbers. One per process.
    """

    failure = "metrics not mirrored"
    log = logger

    def __init__(self, registry: Registry, interval: float = MIRROR_INTERVAL) -> None:
        super().__init__(interval)
        self.registry = registry
        self._metrics: dict[str, Counter | Gauge] = {}
        self._last: dict[tuple[str, tuple[str, ...]], float] = {}
        #: Per sampled histogram: its multiprocess metric, bucket counts and sum mirrored so far.
        self._histograms: dict[str, tuple[Histogram, list[int], list[float]]] = {}

    async def close(self) -> None:
        await super().close()
        with contextlib.suppress(Exception):
            self.sync()  # the last numbers of this process stay in its counters' files

    async def tick(self) -> None:
        self.sync()

    def sync(self) -> None:
        """Mirror the registry's numbers now: counters by their increase, gauges as they are."""
        for family in families(self.registry):
            metric = self._metric(family)
            for values, value in family.samples.items():
                child = metric.labels(*values) if family.labels else metric
                if isinstance(child, Gauge):
                    child.set(value)
                    continue
                key = (family.name, values)
                increase = value - self._last.get(key, 0.0)
                if increase > 0:
                    child.inc(increase)
                    self._last[key] = value
        for name, help_text, attribute in HISTOGRAMS:
            self._sync_histogram(name, help_text, getattr(self.registry, attribute))

    def _metric(self, family: Family) -> Counter | Gauge:
        metric = self._metrics.get(family.name)
        if metric is None:
            name = PREFIX + family.name
            if family.kind == "counter":
                metric = Counter(name, family.help, family.labels, registry=None)
            else:
                metric = Gauge(
                    name, family.help, family.labels, registry=None, multiprocess_mode=family.mode
                )
            self._metrics[family.name] = metric
        return metric

    def _sync_histogram(self, name: str, help_text: str, latency: LatencyHistogram) -> None:
        mirrored = self._histograms.get(name)
        if mirrored is None:
            metric = Histogram(PREFIX + name, help_text, buckets=latency.bounds, registry=None)
            mirrored = self._histograms[name] = (metric, [0] * len(latency.counts), [0.0])
        metric, last_buckets, last_sum = mirrored
        # prometheus_client keeps one (non-cumulative) value per bucket, as the registry does
        buckets = metric._buckets
        for index, count in enumerate(latency.counts):
            increase = count - last_buckets[index]
            if increase > 0:
                buckets[index].inc(increase)
                last_buckets[index] = count
        if latency.sum > last_sum[0]:
            metric._sum.inc(latency.sum - last_sum[0])
            last_sum[0] = latency.sum


def metrics_app(
    registry: Registry,
    *,
    include_default: bool = True,
    multiprocess: bool | None = None,
    mirror_interval: float = MIRROR_INTERVAL,
) -> ASGIApp:
    """An ASGI app serving ``registry``'s metrics in the Prometheus text format.

    ``include_default`` also serves ``prometheus_client``'s default registry (the process
    metrics and the app's own). ``multiprocess`` (default: whether ``PROMETHEUS_MULTIPROC_DIR``
    is set) serves the totals of every process; create the app before the registry starts, so
    that its mirror starts with it.
    """
    if multiprocess is None:
        multiprocess = multiprocess_enabled()
    render: Any
    if multiprocess:
        mirror = Mirror(registry, mirror_interval)
        if registry.started:
            logger.warning("metrics app made after the registry started: mirrored at scrapes only")
        else:
            registry.add_companion(mirror)

        def render() -> bytes:
            mirror.sync()
            collected = CollectorRegistry()
            MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
            return generate_latest(collected)

    else:
        own = CollectorRegistry(auto_describe=False)
        own.register(RegistryCollector(registry))

        def render() -> bytes:
            body = generate_latest(own)
            return body + generate_latest(REGISTRY) if include_default else body

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = render()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return Endpoint(app)


def operations_routes(
    registry: Registry, *, stats_interval: float | None = None
) -> dict[str, ASGIApp]:
    """``/metrics``, ``/livez`` and ``/readyz`` for ``registry``, as ``{path: ASGI app}``, and
    (on Redis) its stats published for ``asgi-groups stats``. Call before the registry starts.

    Mount each path as an app: ``Route(path, app)`` in Starlette and FastAPI,
    :func:`~asgi_groups.health.with_routes` in Quart.
    """
    routes = {"/metrics": metrics_app(registry), "/livez": livez(), "/readyz": readyz(registry)}
    if not registry.started:
        reporter = (
            StatsReporter(registry)
            if stats_interval is None
            else StatsReporter(registry, stats_interval)
        )
        registry.add_companion(reporter)
    return routes
