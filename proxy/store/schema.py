"""The store's tables, as numbered migrations that run in order and once: the same DDL for SQLite and
PostgreSQL (SQLite reads ``double precision`` as REAL and ``bigint`` as INTEGER). ``{s}`` is the schema
prefix: ``pgloupe.`` in PostgreSQL, nothing in SQLite.

A migration is never edited once released: a change to the layout is a new migration at the end, so a
store written by any earlier pgloupe is brought forward by the ones it lacks.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "findings, their counts per replica and hour, and the batches already applied", (
        """CREATE TABLE {s}findings (
            kind text NOT NULL,
            fingerprint text NOT NULL,
            source text NOT NULL,
            severity text NOT NULL,
            confidence double precision NOT NULL,
            tables text NOT NULL,
            databases text NOT NULL,
            example text NOT NULL,
            suggestion text NOT NULL,
            message text NOT NULL,
            applications text NOT NULL,
            tags text NOT NULL,
            details text NOT NULL,
            first_seen double precision NOT NULL,
            last_seen double precision NOT NULL,
            count bigint NOT NULL DEFAULT 0,
            statements bigint NOT NULL DEFAULT 0,
            total_ms double precision NOT NULL DEFAULT 0,
            p95_ms double precision NOT NULL DEFAULT 0,
            PRIMARY KEY (kind, fingerprint))""",
        """CREATE TABLE {s}counts (
            kind text NOT NULL,
            fingerprint text NOT NULL,
            replica text NOT NULL,
            hour bigint NOT NULL,
            count bigint NOT NULL,
            statements bigint NOT NULL,
            total_ms double precision NOT NULL,
            PRIMARY KEY (kind, fingerprint, replica, hour))""",
        """CREATE TABLE {s}batches (
            run_id text NOT NULL,
            seq bigint NOT NULL,
            at double precision NOT NULL,
            PRIMARY KEY (run_id, seq))""",
        "CREATE INDEX findings_last_seen ON {s}findings (last_seen)",
        "CREATE INDEX batches_at ON {s}batches (at)",
    )),
    (2, "states (fixed, regressed, acknowledged, ignored) and deploy markers", (
        "ALTER TABLE {s}findings ADD COLUMN state text NOT NULL DEFAULT 'open'",
        "ALTER TABLE {s}findings ADD COLUMN state_reason text",
        "ALTER TABLE {s}findings ADD COLUMN state_by text",
        "ALTER TABLE {s}findings ADD COLUMN state_at double precision",
        "ALTER TABLE {s}findings ADD COLUMN fixed_at double precision",
        "ALTER TABLE {s}findings ADD COLUMN regressed_at double precision",
        """CREATE TABLE {s}deploys (
            name text NOT NULL,
            at double precision NOT NULL,
            replica text NOT NULL,
            source text NOT NULL,
            PRIMARY KEY (name, at))""",
        "CREATE INDEX deploys_at ON {s}deploys (at)",
    )),
    (3, "a deploy tag marks one deploy however many replicas see it", (
        # the duplicates two replicas could write under version 2 go first: the oldest of each name stays
        "DELETE FROM {s}deploys WHERE source = 'sqlcommenter' AND EXISTS (SELECT 1 FROM {s}deploys e "
        "WHERE e.source = 'sqlcommenter' AND e.name = {s}deploys.name AND e.at < {s}deploys.at)",
        "CREATE UNIQUE INDEX deploys_tag ON {s}deploys (name) WHERE source = 'sqlcommenter'",
    )),
)

VERSION = MIGRATIONS[-1][0]
MIGRATIONS_TABLE = "CREATE TABLE IF NOT EXISTS {s}migrations (version bigint PRIMARY KEY, applied_at double precision NOT NULL)"
