"""The Grafana dashboard in docs/ queries only metrics a live /metrics has: every name in its
PromQL is found in real scrapes of two nodes sharing rooms through Redis, after traffic."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from signaling.redis_liveness import HEARTBEAT
from tests.signaling.clients import clients, get_metrics
from tests.signaling.conftest import NodesFactory, ws_urls
from tests.support import eventually, seconds

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "meshpeer.json"

#: PromQL words that are not metric names.
KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "inf", "nan"}
)
#: What a name can be surrounded by that is not a metric: label matchers, ranges, grouping
#: label lists, strings, dashboard variables.
NOT_NAMES = re.compile(
    r'\{[^}]*\}|\[[^\]]*\]|\b(?:by|without|on|ignoring)\s*\([^)]*\)|"[^"]*"|\$\w+'
)
IDENTIFIER = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions and keywords left out)."""
    bare = NOT_NAMES.sub(" ", expr)
    return {
        name
        for name, call in IDENTIFIER.findall(bare)
        if not call and name.lower() not in KEYWORDS and not name[0].isdigit()
    }


def test_metric_names_reads_promql() -> None:
    expr = (
        'sum by (reason) (rate(meshpeer_leaves_total{instance=~"$instance",a="b c"}[5m]))'
        " / on(instance) group_left process_max_fds offset 5m"
    )
    assert metric_names(expr) == {"meshpeer_leaves_total", "process_max_fds"}
    assert metric_names("count by (version) (python_info)") == {"python_info"}


def dashboard_queries() -> list[str]:
    """Every panel target's ``expr``, and the metric of each ``label_values`` variable."""
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        query = variable.get("definition", "")
        found = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
        assert found or variable["type"] != "query", f"unread variable query {query!r}"
        if found:
            exprs.append(found[1])
    return exprs


@pytest.mark.parametrize("make_nodes", ["2-nodes"], indirect=True)
async def test_every_dashboard_query_names_a_metric_of_a_live_scrape(
    make_nodes: NodesFactory,
) -> None:
    exprs = dashboard_queries()
    wanted: dict[str, str] = {}
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric name found in {expr!r}"
        wanted.update(dict.fromkeys(names, expr))
    assert len(wanted) >= 15, sorted(wanted)

    async with make_nodes(ip_connections=2) as nodes, clients(ws_urls(nodes)) as peers:
        # Traffic that gives every labelled family a sample: joins across nodes, a relayed
        # offer, an error, a leave, an upgrade refused by the per-address cap.
        alice, bob = await peers.join("alice"), await peers.join("bob")  # on n0, n1
        await alice.recv_type("peer-joined")
        await alice.send(type="offer", to="bob", sdp="o")
        await bob.recv_type("offer")
        await alice.send(type="offer", to="nobody", sdp="o")
        await alice.recv_error("unknown-peer")
        second = await peers.connect("second", url=nodes[0].ws_url)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await peers.connect("third", url=nodes[0].ws_url)
        assert refused.value.status == 429
        await bob.ws.close()
        await alice.recv_type("peer-left")

        async def rtt_measured() -> bool:
            scrapes = [await get_metrics(node) for node in nodes]
            return all("meshpeer_redis_rtt_seconds" in m for m in scrapes)

        # The Redis round trip appears with a node's first liveness write.
        await eventually(rtt_measured, HEARTBEAT + seconds(5), "a Redis round trip on /metrics")
        scrapes = [await get_metrics(node) for node in nodes]
        scraped = {key.partition("{")[0] for m in scrapes for key in m}
        missing = sorted(set(wanted) - scraped)
        assert not missing, "dashboard queries name metrics no scrape has: " + "; ".join(
            f"{name} in {wanted[name]!r}" for name in missing
        )
        await second.ws.close()
