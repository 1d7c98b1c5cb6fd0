"""What the HTTP endpoint serves: the findings page, the findings API, /metrics and /healthz; and the
two changes people make through it: a finding's state (acknowledged, ignored, open again, with a
reason) and a deploy marker.

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
from proxy.store import StoreError

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
        if "state" in params:  # new is open, and first seen since the latest deploy
            wanted = {"open", "new"} if params["state"] == "open" else {params["state"]}
            items = [f for f in items if f["state"] in wanted]
        if "application" in params:
            items = [f for f in items if params["application"] in f["applications"]]
        return json_response({"findings": items})

    async def metrics(_query: str):
        await app.refresh_workers()
        # the findings' counts (a pass over every stored finding) in a thread; the rest, which reads the
        # forwarding side's own state, on its loop as always
        app.finding_counts = await asyncio.to_thread(app.store.counts, app.pipeline.findings.keys())
        return exposition(registry)

    async def healthz(_query: str):
        await app.refresh_workers()
        counters = app.proxy_counters()
        queue = app.queue_counters()
        reasons = app.analysis.check_health()
        pipeline = app.pipeline
        status = app.store.status()
        # open to probes: whether the store keeps up, not where it is or what it answered (GET /api/store)
        store = {k: status[k] for k in ("backend", "ok", "behind_s", "pending")}
        # A store that is behind costs durability, not traffic: said here, but never a failing probe
        # (a restart would cut every client and bring the store no closer).
        warnings = [f"findings store behind for {store['behind_s']:.0f}s"] if not store["ok"] else []
        return json_response({
            "status": "failing" if reasons else "degraded" if warnings else "ok",
            "reasons": reasons,
            "warnings": warnings,
            "store": store,
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

    async def deploys(_query: str):
        return json_response({"deploys": app.store.deploys()})

    async def history(query: str):
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        if not params.get("kind") or not params.get("fingerprint"):
            return json_response({"error": "kind and fingerprint are required"}, 400)
        found = await on_store(app.store.history(params["kind"], params["fingerprint"]))
        return found if isinstance(found, tuple) else json_response(found)

    async def store(_query: str):
        return json_response(app.store.status())

    return {"/": findings_page, "/healthz": healthz, "/api/findings": findings, "/metrics": metrics,
            "/api/deploys": deploys, "/api/findings/history": history, "/api/store": store}


STORE_WAIT_S = 10.0


async def on_store(future):
    """The result of a request to the store's thread, awaited without holding a thread; 503 when the
    store fails or does not answer in time (then the request is cancelled unless it has started)."""
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), STORE_WAIT_S)
    except TimeoutError:
        future.cancel()
        return json_response({"error": "the findings store did not answer in time (the change may still be "
                                       "applied): look before trying again"}, 503)
    except StoreError as exc:
        return json_response({"error": f"the findings store is unavailable: {exc}"}, 503)


def _text(payload: dict, name: str, required: bool = True) -> str | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    return value


def post_routes(app) -> dict:
    """POST handlers: a JSON object in, JSON out; 400 names what is wrong, 503 when the store is out of
    reach (the change is not kept: the caller should try again)."""

    async def set_state(payload: dict):
        try:
            kind, fingerprint = _text(payload, "kind"), _text(payload, "fingerprint")
            state = _text(payload, "state")
            reason, by = _text(payload, "reason", False), _text(payload, "by", False)
            future = app.store.set_state(kind, fingerprint, state, reason, by)
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        result = await on_store(future)
        if isinstance(result, tuple):
            return result
        if not result:
            return json_response({"error": "no such finding in the store (it may not be written yet)"}, 404)
        return json_response({"kind": kind, "fingerprint": fingerprint, "state": state})

    async def mark_deploy(payload: dict):
        try:
            future = app.store.mark_deploy(_text(payload, "name"), "http")
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        result = await on_store(future)
        return result if isinstance(result, tuple) else json_response({"deploy": result})

    return {"/api/findings/state": set_state, "/api/deploys": mark_deploy}
