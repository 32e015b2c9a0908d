"""Prometheus text metrics of a running coordinator (``serve --metrics-port``): ``GET /metrics``.

Everything but broker connectivity is read from the store at scrape time through a read-only
connection, so the numbers are the recorded ones (they survive a restart, and agree with
``fedge-coordinator rounds`` and the dashboard); broker connectivity is asked of the live transport.

Metric names (all prefixed ``fedge_``):

- ``rounds_total{status}``: rounds by status (open, completed, abandoned)
- ``round_participants_total``, ``last_round_participants``: devices whose inputs were aggregated
- ``round_drops_total{stage}``: devices lost per stage (``declined``, ``excluded``, or the protocol stage)
- ``rejections_total{kind}``: refused input by kind
- ``epsilon_spent``, ``epsilon_delta``: the campaign's epsilon so far and its delta (absent while DP is off);
  its neighbouring relation (add-or-remove-one: Poisson-sampled cohorts) is in the help text
- ``rollout_devices{rollout,version,state}``, ``rollout_phase{rollout}``, ``rollout_status{rollout,status}``
- ``broker_connected``: 1 while the coordinator's broker session is up
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlite_utils
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fedge.coordinator.fleet.dashboard import EPSILON_RELATION, rollouts_data
from fedge.coordinator.http_server import BackgroundHTTPServer, QuietHandler

log = logging.getLogger(__name__)


class _ReadOnly:
    """A read-only view of the store for one scrape (the readers need ``.db`` and ``.device``)."""

    def __init__(self, path: str) -> None:
        conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)

    def device(self, device_id: str) -> dict[str, Any] | None:
        rows = list(self.db.query("select * from devices where device_id = ?", [device_id]))
        return rows[0] if rows else None

    def close(self) -> None:
        self.db.conn.close()


class CoordinatorCollector(Collector):
    """The metrics above, from the store at ``db_path`` and ``broker_connected()``."""

    def __init__(self, db_path: str, broker_connected: Callable[[], bool] | None = None) -> None:
        self.db_path = db_path
        self.broker_connected = broker_connected

    def collect(self) -> Iterator[Metric]:
        if self.broker_connected is not None:
            g = GaugeMetricFamily("fedge_broker_connected", "1 while the coordinator's broker session is up")
            g.add_metric([], 1.0 if self.broker_connected() else 0.0)
            yield g
        store = _ReadOnly(self.db_path)
        try:
            yield from self._from_store(store)
        finally:
            store.close()

    def _from_store(self, store: _ReadOnly) -> Iterator[Metric]:
        tables = set(store.db.table_names())
        if "rounds" in tables:
            yield from _rounds(store.db)
        if "rejections" in tables:
            c = CounterMetricFamily("fedge_rejections", "Refused input by kind", labels=["kind"])
            for r in store.db.query("select kind, count(*) as n from rejections group by kind order by kind"):
                c.add_metric([r["kind"]], r["n"])
            yield c
        if "rollouts" in tables:
            yield from _rollouts(store)


def _rounds(db: sqlite_utils.Database) -> Iterator[Metric]:
    rows = list(db.query("select status, participants, dropped, epsilon, delta from rounds order by round_id"))
    by_status: dict[str, int] = {}
    drops: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
        for stage, n in json.loads(r["dropped"] or "{}").items():
            drops[stage] = drops.get(stage, 0) + int(n)
    c = CounterMetricFamily("fedge_rounds", "Rounds by status", labels=["status"])
    for status in sorted({"open", "completed", "abandoned"} | set(by_status)):
        c.add_metric([status], by_status.get(status, 0))
    yield c
    yield CounterMetricFamily(
        "fedge_round_participants",
        "Devices aggregated, summed over rounds",
        value=sum(r["participants"] or 0 for r in rows),
    )
    closed = [r for r in rows if r["status"] != "open"]
    if closed:
        yield GaugeMetricFamily(
            "fedge_last_round_participants",
            "Devices aggregated in the last closed round",
            value=closed[-1]["participants"] or 0,
        )
    d = CounterMetricFamily("fedge_round_drops", "Devices lost, by the stage they were lost at", labels=["stage"])
    for stage in sorted(drops):
        d.add_metric([stage], drops[stage])
    yield d
    spent = [r for r in rows if r["epsilon"] is not None]
    if spent:
        yield GaugeMetricFamily(
            "fedge_epsilon_spent",
            f"The campaign's epsilon so far, {EPSILON_RELATION} neighbouring relation (Poisson-sampled cohorts)",
            value=spent[-1]["epsilon"],
        )
        if spent[-1]["delta"] is not None:
            yield GaugeMetricFamily("fedge_epsilon_delta", "The delta of fedge_epsilon_spent", value=spent[-1]["delta"])


def _rollouts(store: _ReadOnly) -> Iterator[Metric]:
    devices = GaugeMetricFamily(
        "fedge_rollout_devices", "Devices of a rollout by state", labels=["rollout", "version", "state"]
    )
    phase = GaugeMetricFamily("fedge_rollout_phase", "A rollout's current phase (1-based)", labels=["rollout"])
    status = GaugeMetricFamily("fedge_rollout_status", "1 for a rollout's current status", labels=["rollout", "status"])
    for r in rollouts_data(store):
        for state, n in sorted(r["devices"].items()):
            devices.add_metric([r["rollout_id"], r["version"], state], n)
        phase.add_metric([r["rollout_id"]], r["phase"])
        status.add_metric([r["rollout_id"], r["status"]], 1)
    yield from (devices, phase, status)


def registry_for(db_path: str, broker_connected: Callable[[], bool] | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoordinatorCollector(db_path, broker_connected))
    return registry


class _Handler(QuietHandler):
    log_name = "metrics"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?", 1)[0] != "/metrics":
            return self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found: try /metrics")
        try:
            body = generate_latest(self.server.registry)
        except sqlite3.Error as e:
            log.warning("metrics: store query failed: %s", e)
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"database busy or not migrated")
        self._send(HTTPStatus.OK, CONTENT_TYPE_LATEST, body)


class _Server(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], registry: CollectorRegistry) -> None:
        self.registry = registry
        super().__init__(address, _Handler)


class MetricsServer(BackgroundHTTPServer):
    """``GET /metrics`` on ``host:port`` (port 0: any free port) in a background thread."""

    def __init__(
        self,
        db_path: str,
        host: str = "127.0.0.1",
        port: int = 9464,
        broker_connected: Callable[[], bool] | None = None,
    ) -> None:
        registry = registry_for(db_path, broker_connected)
        super().__init__("metrics", host, port, lambda address: _Server(address, registry), path="/metrics")
        self.registry = registry
