"""Server counters, rendered in the Prometheus text format. Pure: the adapter increments."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

#: Message types are chosen by clients: past this many distinct ``type`` labels, the rest
#: are counted under ``OTHER_TYPE_LABEL`` so a client cannot grow /metrics without bound.
MAX_TYPE_LABELS = 32
OTHER_TYPE_LABEL = "(other)"


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


@dataclass
class Metrics:
    connections_total: int = 0
    connections_open: int = 0
    joins_total: int = 0
    slow_clients_dropped_total: int = 0
    leaves: Counter[str] = field(default_factory=Counter)
    routed: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)

    def render(
        self, rooms: int, peers: int, uptime: float, cluster: ClusterStats | None = None
    ) -> str:
        """The /metrics page (Prometheus text exposition format 0.0.4)."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: Iterable[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{labels} {value:g}")

        def labelled(label: str, counts: Counter[str]) -> list[tuple[str, float]]:
            return [(f'{{{label}="{_escape(key)}"}}', n) for key, n in sorted(counts.items())]

        metric(
            "meshpeer_connections_total",
            "counter",
            "WebSocket connections accepted.",
            [("", self.connections_total)],
        )
        metric(
            "meshpeer_connections",
            "gauge",
            "WebSocket connections open now.",
            [("", self.connections_open)],
        )
        metric("meshpeer_joins_total", "counter", "Joins accepted.", [("", self.joins_total)])
        metric(
            "meshpeer_leaves_total",
            "counter",
            "Joined peers that left, by reason.",
            labelled("reason", self.leaves),
        )
        metric(
            "meshpeer_messages_routed_total",
            "counter",
            "Messages relayed, by type.",
            labelled("type", self.routed),
        )
        metric(
            "meshpeer_errors_total",
            "counter",
            "Error frames sent, by code.",
            labelled("code", self.errors),
        )
        metric(
            "meshpeer_refused_total",
            "counter",
            "WebSocket upgrades refused before any frame, by reason.",
            labelled("reason", self.refused),
        )
        metric(
            "meshpeer_slow_clients_dropped_total",
            "counter",
            "Clients disconnected because their send queue overflowed.",
            [("", self.slow_clients_dropped_total)],
        )
        metric("meshpeer_rooms", "gauge", "Rooms with at least one peer.", [("", rooms)])
        metric("meshpeer_peers", "gauge", "Joined peers.", [("", peers)])
        metric(
            "meshpeer_uptime_seconds",
            "gauge",
            "Seconds since the server started.",
            [("", round(uptime, 3))],
        )
        if cluster is not None:
            metric("meshpeer_redis_up", "gauge", "1 while Redis answers.", [("", cluster.redis_up)])
            rtt = cluster.redis_rtt
            metric(
                "meshpeer_redis_rtt_seconds",
                "gauge",
                "Round trip of the node's last liveness write to Redis.",
                [("", round(rtt, 6))] if rtt is not None else [],
            )
            metric(
                "meshpeer_cluster_messages_total",
                "counter",
                "Messages between server nodes, by direction.",
                [
                    ('{direction="out"}', cluster.published),
                    ('{direction="in"}', cluster.received),
                    ('{direction="dropped"}', cluster.dropped),
                ],
            )
            metric(
                "meshpeer_redis_errors_total",
                "counter",
                "Redis commands that failed.",
                [("", cluster.errors)],
            )
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    """A label value as the text format wants it (message types come from clients)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
