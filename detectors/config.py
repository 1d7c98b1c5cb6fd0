"""Detector thresholds and silences: defaults from the source documents, overridable in ``[detectors]``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

DEFAULT_TENANT_COLUMNS = ("team_id", "tenant_id", "organization_id", "org_id",
                          "teamId", "tenantId", "organizationId", "orgId")
RUNTIME_KINDS = (
    "n_plus_one_select", "n_plus_one_insert", "n_plus_one_update", "n_plus_one_delete",
    "repeated_identical", "join_candidate", "missing_transaction", "slow_query", "cross_tenant",
    "select_star", "unbounded_result", "offset_pagination", "not_in_subquery", "long_transaction",
)
ADVISOR_KINDS = (  # from the catalog and statistics
    "missing_tenant_index", "missing_fk_index", "missing_index", "duplicate_index", "unused_index",
    "low_index_hit_ratio", "high_seq_scan_ratio", "high_dead_tuple_ratio", "connection_saturation",
    "partition_candidate",
)
KINDS = RUNTIME_KINDS + ADVISOR_KINDS


@dataclass(slots=True)
class DetectorConfig:
    unit_gap_ms: float = 500.0  # idle time that ends a unit of work outside a transaction
    max_unit_statements: int = 5000
    n_plus_one_min: int = 5  # repetitions of one shape in a unit before it is an N+1
    repeated_identical_min: int = 3
    # a shape's p99 over the first is a warning, over the second critical (judged once the shape has run
    # 500 times or gone quiet); one execution over the third is in the slow log, an error at once
    slow_query_ms: tuple[float, float, float] = (100.0, 500.0, 1000.0)
    unbounded_rows: int = 1000
    offset_rows: int = 1000
    long_transaction_ms: tuple[float, float] = (5000.0, 30000.0)  # warning, error
    wide_row_bytes: int = 2048
    min_confidence: float = 0.5
    tenant_columns: tuple[str, ...] = DEFAULT_TENANT_COLUMNS
    # tables a team declares shared by all tenants although they have a tenant column ("plans"), or
    # lookups by a column that are fine before the tenant is known ("users.email" for the login)
    tenant_free: frozenset[str] = frozenset()
    schema_refresh_s: float = 60.0
    catalog_dsn: str | None = None  # side connection for the catalog; default: the upstream URL
    # advisor (catalog and statistics); ratios are (warning, error)
    frequent_calls: int = 100  # a shape run this often is worth an index even when each run is fast
    hot_table_calls: int = 100  # statements on a table that make its missing tenant index a P0
    large_table_rows: int = 10_000  # tables below this are not judged on sequential scans
    partition_min_rows: int = 1_000_000
    index_hit_ratio: tuple[float, float] = (0.99, 0.95)  # below: warning, error
    seq_scan_ratio: tuple[float, float] = (0.01, 0.05)  # above: warning, error
    dead_tuple_ratio: tuple[float, float] = (0.05, 0.10)
    connection_ratio: tuple[float, float] = (0.80, 0.90)
    min_index_blocks: int = 1000  # index block reads before a hit ratio means anything
    min_cost_gain: float = 0.10  # a hypothetical index must cut the plan cost by this fraction
    unused_index_min_age_s: float = 3600.0  # in the proxy, an index must be known this long to be called unused
    max_fingerprint_labels: int = 50  # /metrics: fingerprints with their own label; the rest are "other"
    # statements longer than this never reach sqlglot (its parse time grows faster than the text): their
    # shape is parsed from the normalized text when that fits, else they are fingerprinted by tokens
    max_parse_chars: int = 16384
    disabled: frozenset[str] = frozenset()
    silenced_kinds: frozenset[str] = frozenset()
    silenced_fingerprints: frozenset[str] = frozenset()
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: dict | None) -> DetectorConfig:
        data = dict(data or {})
        silence = data.pop("silence", {}) or {}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown [detectors] settings: {', '.join(sorted(unknown))}")
        values = {}
        for key, value in data.items():
            values[key] = _check(key, value, getattr(cls, key) if hasattr(cls, key) else None)
        config = cls(**values)
        config.silenced_kinds = frozenset(silence.get("kinds", ()))
        config.silenced_fingerprints = frozenset(silence.get("fingerprints", ()))
        bad = (config.disabled | config.silenced_kinds) - set(KINDS)
        if bad:
            raise ValueError(f"unknown finding kinds: {', '.join(sorted(bad))}")
        if len(config.slow_query_ms) != 3 or len(config.long_transaction_ms) != 2:
            raise ValueError("slow_query_ms needs 3 thresholds and long_transaction_ms 2")
        for name in ("slow_query_ms", "long_transaction_ms", "seq_scan_ratio", "dead_tuple_ratio", "connection_ratio"):
            values = getattr(config, name)
            if list(values) != sorted(values):
                raise ValueError(f"{name} thresholds must increase")
        if list(config.index_hit_ratio) != sorted(config.index_hit_ratio, reverse=True):
            raise ValueError("index_hit_ratio thresholds must decrease (warning below the first, error below the second)")
        return config


_NUMBERS = {"unit_gap_ms", "slow_query_ms", "long_transaction_ms", "min_confidence", "schema_refresh_s",
            "min_cost_gain", "unused_index_min_age_s"}
_INTEGERS = {"max_unit_statements", "n_plus_one_min", "repeated_identical_min", "unbounded_rows", "offset_rows",
             "wide_row_bytes", "frequent_calls", "hot_table_calls", "large_table_rows", "partition_min_rows",
             "min_index_blocks", "max_fingerprint_labels", "max_parse_chars"}
_PAIRS = {"index_hit_ratio", "seq_scan_ratio", "dead_tuple_ratio", "connection_ratio"}
_NAME_LISTS = {"tenant_columns", "disabled", "tenant_free"}


def _check(key: str, value, default):
    """Type-check one [detectors] value so a typo fails at start-up, not on every batch."""
    def number(v, integer: bool):
        if isinstance(v, bool) or not isinstance(v, int | float) or (integer and not isinstance(v, int)) or v < 0:
            raise ValueError(f"{key} must be a non-negative {'integer' if integer else 'number'}, got {v!r}")
        return v

    if key in ("slow_query_ms", "long_transaction_ms") or key in _PAIRS:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{key} must be a list of numbers, got {value!r}")
        if key in _PAIRS and len(value) != 2:
            raise ValueError(f"{key} needs a warning and an error threshold")
        return tuple(number(v, False) for v in value)
    if key in _NUMBERS:
        return number(value, False)
    if key in _INTEGERS:
        return number(value, True)
    if key in _NAME_LISTS:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"{key} must be a list of names, got {value!r}")
        return frozenset(value) if key in ("disabled", "tenant_free") else tuple(value)
    if key == "catalog_dsn":
        if value is not None and not isinstance(value, str):
            raise ValueError(f"catalog_dsn must be a URL string, got {value!r}")
        return value
    raise ValueError(f"{key} cannot be set in the config file")
