"""A statement's values by position: the keyed hash of the value a shape's column is compared with or
written as, read from one execution (its bound parameters, interpolated literals, = ANY arrays).

Shapes are cached across executions whose IN lists differ in length, so a position is read only when
the execution has the count of parameters or literals the shape was parsed from."""

from __future__ import annotations

from detectors.units import Statement


def value_at(stmt: Statement, kind: str, n: int):
    """The hash of parameter $n ("param"), of literal n ("literal"), or the hashes of array $n's elements
    ("array", a tuple); None when that execution's values cannot be placed."""
    ev = stmt.event
    params = ev.param_hashes
    if kind == "array":
        for index, hashes in ev.array_hashes:
            if index == n - 1:
                return hashes
        return None
    if kind == "param":
        if stmt.fp.param_count != len(params):
            return None
        return params[n - 1] if 0 < n <= len(params) else None
    if stmt.fp.literal_count != len(stmt.values) - len(params):
        return None
    index = len(params) + n
    return stmt.values[index] if index < len(stmt.values) else None


def pinned_values(stmt: Statement, table: str | None, columns) -> list[str] | None:
    """The hashes of the values the statement's WHERE compares ``columns`` of ``table`` with (IN lists and
    = ANY arrays element by element); None when one of them cannot be read."""
    fp = stmt.fp
    single = len(fp.tables) == 1
    out: list[str] = []
    found = set()
    for t, column, kind, n in fp.value_pins:
        if column not in columns or not (t == table or (t is None and single) or table is None):
            continue
        h = value_at(stmt, kind, n)
        if h is None:
            return None
        found.add(column)
        if isinstance(h, tuple):
            out.extend(h)
        else:
            out.append(h)
    return out if found >= set(columns) else None


def inserted_values(stmt: Statement) -> dict[str, str]:
    """column -> hash of the value an INSERT's first row writes there (when it can be read)."""
    out = {}
    for column, kind, n in stmt.fp.insert_values:
        h = value_at(stmt, kind, n)
        if isinstance(h, str):
            out[column] = h
    return out
