"""Prometheus exposition for /metrics, read from the running state at scrape time.

A custom collector costs nothing on the forwarding path: counters the proxy already keeps are
read when Prometheus asks, instead of being incremented through the client library per statement.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from detectors.traffic import BUCKETS

_RATIO_HELP = {
    "index_hit_ratio": "Index blocks found in shared buffers (alert below 0.95)",
    "seq_scan_ratio": "Share of scans on large tables that are sequential (alert above 0.05)",
    "dead_tuple_ratio": "Dead tuples among all tuples (alert above 0.10)",
    "connection_ratio": "Client connections over max_connections (alert above 0.90)",
}


def traffic_families(traffic):
    """The latency histogram and the rows/bytes counters, from the pipeline's TrafficStats."""
    series, rows, nbytes = traffic.snapshot()
    latency = HistogramMetricFamily(
        "pgloupe_statement_duration_seconds",
        "Statement duration to CommandComplete, by statement type and (for the busiest shapes) fingerprint",
        labels=["type", "fingerprint"])
    bounds = (*[str(b) for b in BUCKETS], "+Inf")
    for kind, fingerprint, buckets, _count, total in sorted(series):
        cumulative, running = [], 0
        for bound, n in zip(bounds, buckets, strict=True):
            running += n
            cumulative.append((bound, running))
        latency.add_metric([kind, fingerprint], cumulative, total)
    yield latency
    row_family = CounterMetricFamily("pgloupe_statement_rows", "Rows returned or affected", labels=["type"])
    byte_family = CounterMetricFamily("pgloupe_response_bytes", "Bytes the server sent back", labels=["type"])
    for kind in sorted(rows):
        row_family.add_metric([kind], rows[kind])
        byte_family.add_metric([kind], nbytes[kind])
    yield row_family
    yield byte_family


def store_families(app):
    """Findings as the store knows them (every replica's, kept over restarts: each replica shows the same
    set, so dashboards take the max over replicas, not the sum), and the store's own health."""
    counts, states = app.finding_counts or app.store.counts(app.pipeline.findings.keys())
    findings = GaugeMetricFamily("pgloupe_findings", "Runtime findings not fixed or ignored, by kind and severity "
                                 "(the store's, shared by every replica)", labels=["kind", "severity"])
    by_state = GaugeMetricFamily("pgloupe_findings_by_state", "Findings, runtime and advisor, by state",
                                 labels=["state"])
    for (kind, severity), n in sorted(counts.items()):
        findings.add_metric([kind, severity], n)
    for state, n in sorted(states.items()):
        by_state.add_metric([state], n)
    yield findings
    yield by_state
    store = app.store.status()
    yield GaugeMetricFamily("pgloupe_store_up", "1 when the last write to the findings store succeeded",
                            value=1 if store["ok"] else 0)
    yield GaugeMetricFamily("pgloupe_store_behind_seconds", "How long the findings store has been failing (0: "
                            "caught up); findings wait in memory meanwhile", value=store["behind_s"])
    yield GaugeMetricFamily("pgloupe_store_pending_findings", "Findings with changes not yet written to the store",
                            value=store["pending"])
    yield CounterMetricFamily("pgloupe_store_batches", "Batches written to the findings store", value=store["batches"])
    yield CounterMetricFamily("pgloupe_store_failures", "Failed attempts to reach or write the findings store",
                              value=store["failures"])
    yield CounterMetricFamily("pgloupe_store_dropped", "Finding changes dropped because too many were waiting for "
                              "the store", value=store["dropped"])
    yield CounterMetricFamily("pgloupe_store_regressions", "Findings this replica saw come back after being fixed",
                              value=app.store.regressions)


class AppCollector:
    def __init__(self, app):
        self.app = app

    def collect(self):
        app = self.app
        counters = app.proxy_counters()
        queue = app.queue_counters()
        fp = app.pipeline.fingerprint
        yield GaugeMetricFamily("pgloupe_client_connections", "Client connections open",
                                value=counters.get("client_connections", 0))
        yield CounterMetricFamily("pgloupe_client_connections", "Client connections accepted",
                                  value=counters.get("connections_total", 0))
        yield GaugeMetricFamily("pgloupe_upstream_connections", "Connections open to the upstream server",
                                value=counters.get("upstream_connections", 0))
        rejected = CounterMetricFamily("pgloupe_client_connections_rejected",
                                       "Client sessions refused with 53300 by the client limits", labels=["limit"])
        limits = app.proxy.admission.limits
        for limit in ("max_client_connections", "max_connections_per_ip"):
            rejected.add_metric([limit], limits.rejected[limit])
        yield rejected
        yield GaugeMetricFamily("pgloupe_event_loop_lag_seconds",
                                "How late the forwarding loop runs its callbacks (worst loop, last 200 ms); "
                                "taken off statement durations", value=counters.get("loop_lag_us", 0) / 1e6)
        if app.workers is not None:
            yield GaugeMetricFamily("pgloupe_workers", "Forwarding worker processes configured",
                                    value=app.workers.count)
            yield CounterMetricFamily("pgloupe_worker_restarts", "Worker processes restarted after exiting",
                                      value=app.workers.restarts)
            yield CounterMetricFamily("pgloupe_worker_prepared_refused",
                                      "Named statements' Parse messages the workers did not keep to re-send after "
                                      "a capture gap (their bound was full): a statement prepared before a gap and "
                                      "run after it is not analysed", value=counters.get("prepared_refused", 0))
        statements = CounterMetricFamily("pgloupe_statements", "Statements analysed, by command tag",
                                         labels=["command"])
        for command, n in sorted(app.analysis.statements.items()):
            statements.add_metric([command or "unknown"], n)
        yield statements
        yield from traffic_families(app.pipeline.traffic)
        yield GaugeMetricFamily("pgloupe_events_queue_depth", "Statement events waiting for analysis",
                                value=queue["queued"])
        yield CounterMetricFamily("pgloupe_events_dropped", "Statement events dropped because the queue was full",
                                  value=queue["dropped"])
        yield CounterMetricFamily("pgloupe_fingerprint_parse_fallbacks",
                                  "Statements sqlglot could not parse, fingerprinted by the token normalizer",
                                  value=fp.fallbacks)
        cache = CounterMetricFamily("pgloupe_fingerprint_cache_lookups", "Fingerprint cache lookups", labels=["result"])
        cache.add_metric(["raw_hit"], fp.hits)
        cache.add_metric(["shape_hit"], fp.shape_hits)
        cache.add_metric(["parse"], fp.parses)
        yield cache
        yield from store_families(app)
        reviews = sorted(app.reviews.current.items())
        if reviews:
            ratios = {name: GaugeMetricFamily(f"pgloupe_db_{name}", _RATIO_HELP[name], labels=["database"])
                      for name in _RATIO_HELP}
            for database, current in reviews:
                for name, value in current.ratios.items():
                    if value is not None:
                        ratios[name].add_metric([database], value)
            yield from (family for family in ratios.values() if family.samples)
            # the server's connections are one number, whichever database's side connection read them
            server = app.reviews.upstream or reviews[0][1]
            yield GaugeMetricFamily("pgloupe_db_max_connections", "The server's max_connections",
                                    value=server.catalog.max_connections)
            yield GaugeMetricFamily("pgloupe_db_connections", "Client backends connected to the server",
                                    value=server.catalog.connections)
            advice = GaugeMetricFamily("pgloupe_advice", "Advisor findings by kind and severity",
                                       labels=["kind", "severity"])
            counts: dict[tuple[str, str], int] = {}
            for _database, current in reviews:
                for a in current.advice:
                    counts[(a.kind, a.severity)] = counts.get((a.kind, a.severity), 0) + 1
            for (kind, severity), n in sorted(counts.items()):
                advice.add_metric([kind, severity], n)
            yield advice
        yield CounterMetricFamily("pgloupe_upstream_connect_errors", "Upstream connections that failed",
                                  value=counters.get("upstream_errors", 0))
        alerts = CounterMetricFamily("pgloupe_alerts", "Webhook alert deliveries by outcome", labels=["outcome"])
        sender = app.alerts
        for outcome in ("sent", "failed", "retried", "dropped", "deduplicated"):
            alerts.add_metric([outcome], getattr(sender, outcome))
        yield alerts
        yield CounterMetricFamily("pgloupe_catalog_errors", "Catalog reads that failed", value=app.reviews.errors)
        yield CounterMetricFamily("pgloupe_advice_errors", "Reviews whose advice could not be completed",
                                  value=app.reviews.advice_errors)
        yield CounterMetricFamily("pgloupe_analysis_errors",
                                  "Times a session's analysis failed and waited for its next clean point",
                                  value=counters.get("analysis_errors", 0))
        yield CounterMetricFamily("pgloupe_analysis_failures",
                                  "Analysis steps (a batch, the detectors on one event, the catalog, the advisor) "
                                  "that failed and were contained", value=app.analysis.failures)
        reasons = app.analysis.check_health()
        yield GaugeMetricFamily("pgloupe_analysis_up",
                                "1 while the analysis is running and keeping up; 0 when it is stalled or a task of "
                                "it has stopped (/healthz says why)", value=0 if reasons else 1)
        memory = GaugeMetricFamily("pgloupe_analysis_memory_bytes",
                                   "Bytes the analysis keeps, by table (each bounded: analysis_memory_mb)", labels=["table"])
        limits = GaugeMetricFamily("pgloupe_analysis_memory_limit_bytes", "The bound of each table, in bytes",
                                   labels=["table"])
        evictions = CounterMetricFamily("pgloupe_analysis_evictions",
                                        "Entries a table dropped or refused to stay within its bound", labels=["table"])
        tables = app.pipeline.memory()
        texts = app.proxy.prepared_texts
        tables["prepared_statements"] = (texts.used, texts.limit, texts.evicted)
        for table, (used, limit, evicted) in sorted(tables.items()):
            memory.add_metric([table], used)
            limits.add_metric([table], limit)
            evictions.add_metric([table], evicted)
        yield memory
        yield limits
        yield evictions
        yield GaugeMetricFamily("pgloupe_analysis_stalled_seconds",
                                "Seconds statements have waited with nothing analysed (0 when nothing waits)",
                                value=app.analysis.stalled_s)


def registry_for(app) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AppCollector(app))
    return registry


def exposition(registry: CollectorRegistry) -> tuple[int, str, bytes]:
    return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(registry)
