"""The findings a replica shows: the store's merged record of every replica, plus what this process
has seen and not yet written. Pure: the caller passes the pieces, taken under its lock."""

from __future__ import annotations

from proxy.store.records import MAX_LABELS, OPEN, SEVERITY_RANK, higher, merge_labels, merge_tags

NEW = "new"  # shown for an open finding first seen after the latest deploy
TAG_VALUES_SHOWN = 20  # per tag, as Finding.to_json shows them (the store keeps up to 50)
_STATE_FIELDS = ("state_reason", "state_by", "state_at", "fixed_at", "regressed_at")
_INTERNAL: tuple[str, ...] = ()


def _public(record: dict, last_deploy: float | None) -> dict:
    out = {k: v for k, v in record.items() if k not in _INTERNAL}
    out.setdefault("source", "runtime")
    for name in ("applications", "databases"):  # as the findings API always gave them: sorted
        out[name] = sorted(out.get(name) or [])
    out["tags"] = {k: sorted(v)[:TAG_VALUES_SHOWN] for k, v in (out.get("tags") or {}).items()}
    details = out.pop("details", None)
    if details:
        out["details"] = details
    out["total_ms"] = round(float(out.get("total_ms") or 0.0), 3)
    out["p95_ms"] = round(float(out.get("p95_ms") or 0.0), 3)
    state = out.get("state") or OPEN
    if state == OPEN and last_deploy is not None and out.get("first_seen", 0) >= last_deploy:
        state = NEW
    out["state"] = state
    for name in _STATE_FIELDS:
        out.setdefault(name, None)
    return out


def _fold(target: dict, local: dict) -> None:
    """A record from the store, brought up to what this process knows now (counts excepted)."""
    if SEVERITY_RANK.get(local["severity"], 0) >= SEVERITY_RANK.get(target["severity"], 0):
        target["message"] = local["message"]
    target["severity"] = higher(target["severity"], local["severity"])
    target["confidence"] = max(float(target.get("confidence") or 0), float(local.get("confidence") or 0))
    target["first_seen"] = min(target["first_seen"], local["first_seen"])
    target["last_seen"] = max(target["last_seen"], local["last_seen"])
    for name in ("tables", "databases", "applications"):
        target[name] = merge_labels(target.get(name) or [], local.get(name) or [], MAX_LABELS)
    target["tags"] = merge_tags(target.get("tags") or {}, local.get("tags") or {})
    if local.get("p95_ms"):
        target["p95_ms"] = local["p95_ms"]


def merged_view(stored: dict[tuple[str, str], dict], unsent: dict[tuple[str, str], tuple[int, int, float]],
                local: list[dict], advice: list[dict], last_deploy: float | None) -> list[dict]:
    """``stored``: the store's records; ``unsent``: counts this process has not written yet; ``local``:
    this process's runtime findings (counts since it started); ``advice``: the advisor's current findings."""
    out = {key: _public(record, last_deploy) for key, record in stored.items()}
    for finding in local:
        key = (finding["kind"], finding["fingerprint"])
        target = out.get(key)
        if target is None:  # not in the store yet (or the store is out of reach): this process's own counts
            out[key] = _public({**finding, "state": OPEN}, last_deploy)
            continue
        _fold(target, finding)
        count, statements, ms = unsent.get(key, (0, 0, 0.0))
        target["count"] += count
        target["statements"] += statements
        target["total_ms"] = round(target["total_ms"] + ms, 3)
    for finding in advice:  # the latest review is the truth about the database now
        key = (finding["kind"], finding["fingerprint"])
        target = out.get(key)
        if target is None:
            out[key] = _public({**finding, "state": OPEN}, last_deploy)
        else:
            state = {k: target[k] for k in ("state", "first_seen", *_STATE_FIELDS)}
            target.update(_public({**finding, **state}, last_deploy))
            target["first_seen"] = min(state["first_seen"], finding.get("first_seen") or state["first_seen"])
    items = list(out.values())
    items.sort(key=lambda f: (-SEVERITY_RANK.get(f["severity"], 0), -f["total_ms"], -f["count"]))
    return items
