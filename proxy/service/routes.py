"""What the HTTP endpoint serves: the findings page, the findings API, /metrics and /healthz.

/healthz and the page are open even with ``http_token``: probes need /healthz (counts only), and the
page is static (it asks the user for the token and sends it with each API call).
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

import proxy
from proxy.service.http import json_response
from proxy.service.metrics import exposition, registry_for
from proxy.service.page import index as findings_page

PUBLIC_PATHS = frozenset({"/healthz", "/"})


def routes(app) -> dict:
    registry = registry_for(app)
    implementation = proxy.implementation()  # the hot path: "compiled" or "pure Python"

    async def findings(query: str):
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        # Built on a worker thread: a large store must not hold up the forwarding loop.
        items = await asyncio.to_thread(app.all_findings)
        for key in ("kind", "severity"):
            if key in params:
                items = [f for f in items if f[key] == params[key]]
        if "application" in params:
            items = [f for f in items if params["application"] in f["applications"]]
        return json_response({"findings": items})

    async def metrics(_query: str):
        await app.refresh_workers()
        return exposition(registry)

    async def healthz(_query: str):
        await app.refresh_workers()
        counters = app.proxy_counters()
        queue = app.queue_counters()
        reasons = app.analysis.check_health()
        pipeline = app.pipeline
        return json_response({
            "status": "failing" if reasons else "ok",
            "reasons": reasons,
            "implementation": implementation,
            "workers": app.settings.workers,
            "client_connections": counters.get("client_connections", 0),
            "connections_total": counters.get("connections_total", 0),
            "statements": sum(app.analysis.statements.values()),
            "findings": len(pipeline.findings),
            "schema_tables": len(pipeline.schema.tables),
            "fingerprint_fallbacks": pipeline.fingerprint.fallbacks,
            "events_queued": queue["queued"],
            "events_dropped": queue["dropped"],
            "analysis_errors": counters.get("analysis_errors", 0),
            "analysis_failures": app.analysis.failures,
            "upstream_errors": counters.get("upstream_errors", 0),
        }, 503 if reasons else 200)

    return {"/": findings_page, "/healthz": healthz, "/api/findings": findings, "/metrics": metrics}
