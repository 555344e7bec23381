"""Server counters and the /metrics page (Prometheus text format, through prometheus-client).

The relay counts with plain ints and ``Counter`` entries (an attribute increment per
message, no lock, no library call); the client library reads them only when Prometheus
scrapes, through :class:`ServerCollector` (its "custom collector" pattern for exactly this
case). Each server has its own ``CollectorRegistry``: several servers share one process in
the tests, and the library's global registry would mix them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

__all__ = [
    "CONTENT_TYPE",
    "MAX_TYPE_LABELS",
    "OTHER_TYPE_LABEL",
    "ClusterStats",
    "Metrics",
    "ServerCollector",
    "ServerState",
    "exposition",
    "metrics_registry",
]

#: Message types are chosen by clients: past this many distinct ``type`` labels, the rest
#: are counted under ``OTHER_TYPE_LABEL`` so a client cannot grow /metrics without bound.
MAX_TYPE_LABELS = 32
OTHER_TYPE_LABEL = "(other)"
#: The text format 0.0.4 that ``generate_latest`` writes (names and labels kept ASCII).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


@dataclass(frozen=True)
class ClusterStats:
    """A node's part in rooms shared through Redis, for /healthz and /metrics."""

    node: str
    redis_up: bool
    redis_rtt: float | None  # seconds, of the last liveness write
    published: int  # messages sent to other nodes
    received: int  # messages from other nodes
    dropped: int  # messages not sent: too far behind Redis
    errors: int  # Redis commands that failed


@dataclass(frozen=True)
class ServerState:
    """What a scrape reads from the server besides the counters: gauges of the moment."""

    rooms: int
    peers: int
    connections: int
    uptime: float  # seconds
    cluster: ClusterStats | None = None


@dataclass
class Metrics:
    """The server's counters, incremented by the adapter on the hot path."""

    connections_total: int = 0
    joins_total: int = 0
    slow_clients_dropped_total: int = 0
    leaves: Counter[str] = field(default_factory=Counter)
    routed: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)

    def families(self, state: ServerState) -> list[Metric]:
        """The meshpeer_* metric families, with their names and labels of before the
        library (dashboards keep working)."""

        def counter(name: str, help_: str, value: float) -> Metric:
            return CounterMetricFamily(name, help_, value=value)

        def gauge(name: str, help_: str, value: float | None) -> Metric:
            family = GaugeMetricFamily(name, help_)
            if value is not None:
                family.add_metric([], value)
            return family

        def labelled(name: str, help_: str, label: str, counts: Counter[str]) -> Metric:
            family = CounterMetricFamily(name, help_, labels=[label])
            for key, n in sorted(counts.items()):
                family.add_metric([key], n)
            return family

        out = [
            counter(
                "meshpeer_connections_total",
                "WebSocket connections accepted.",
                self.connections_total,
            ),
            gauge("meshpeer_connections", "WebSocket connections open now.", state.connections),
            counter("meshpeer_joins_total", "Joins accepted.", self.joins_total),
            labelled(
                "meshpeer_leaves_total", "Joined peers that left, by reason.", "reason", self.leaves
            ),
            labelled(
                "meshpeer_messages_routed_total", "Messages relayed, by type.", "type", self.routed
            ),
            labelled("meshpeer_errors_total", "Error frames sent, by code.", "code", self.errors),
            labelled(
                "meshpeer_refused_total",
                "WebSocket upgrades refused before any frame, by reason.",
                "reason",
                self.refused,
            ),
            counter(
                "meshpeer_slow_clients_dropped_total",
                "Clients disconnected because their send queue overflowed.",
                self.slow_clients_dropped_total,
            ),
            gauge("meshpeer_rooms", "Rooms with at least one peer.", state.rooms),
            gauge("meshpeer_peers", "Joined peers.", state.peers),
            gauge(
                "meshpeer_uptime_seconds",
                "Seconds since the server started.",
                round(state.uptime, 3),
            ),
        ]
        cluster = state.cluster
        if cluster is not None:
            rtt = cluster.redis_rtt
            directions = Counter(
                {"out": cluster.published, "in": cluster.received, "dropped": cluster.dropped}
            )
            out += [
                gauge("meshpeer_redis_up", "1 while Redis answers.", float(cluster.redis_up)),
                gauge(
                    "meshpeer_redis_rtt_seconds",
                    "Round trip of the node's last liveness write to Redis.",
                    round(rtt, 6) if rtt is not None else None,
                ),
                labelled(
                    "meshpeer_cluster_messages_total",
                    "Messages between server nodes, by direction.",
                    "direction",
                    directions,
                ),
                counter(
                    "meshpeer_redis_errors_total", "Redis commands that failed.", cluster.errors
                ),
            ]
        return out


class ServerCollector:
    """prometheus-client's view of one server: its counters and the gauges ``read`` returns,
    turned into metric families at scrape time only."""

    def __init__(self, metrics: Metrics, read: Callable[[], ServerState]) -> None:
        self._metrics = metrics
        self._read = read

    def collect(self) -> Iterator[Metric]:
        yield from self._metrics.families(self._read())


def metrics_registry(collector: ServerCollector) -> CollectorRegistry:
    """One server's registry: its own metrics plus the library's process (CPU, memory, open
    files), platform (``python_info``) and garbage collector metrics."""
    registry = CollectorRegistry()
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The /metrics page: every collector of ``registry`` in the text format."""
    return generate_latest(registry)
