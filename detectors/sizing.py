"""The analysis's memory: how ``analysis_memory_mb`` is shared, and what an object kept costs.

``deep_size`` walks what an object holds (strings, numbers, tuples, lists, sets, dicts, deques, slots
and dataclasses) once, counting each object once, as sys.getsizeof reports it: close to what
tracemalloc sees for the same structure (tests/test_memory_bounds.py holds it to that).
"""

from __future__ import annotations

import sys
from collections import deque

_ATOMS = (str, bytes, int, float, bool, type(None))
# An entry's share of the dict or OrderedDict slot and link that holds it in a cache.
ENTRY_OVERHEAD = 120


def deep_size(obj, _seen: set | None = None, opaque: tuple[type, ...] = ()) -> int:
    """``opaque``: types whose instances belong to someone else (a catalog's tables), neither counted
    nor walked."""
    seen = _seen if _seen is not None else set()
    stack = [obj]
    total = 0
    while stack:
        item = stack.pop()
        if id(item) in seen or (opaque and isinstance(item, opaque)):
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, _ATOMS):
            continue
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (tuple, list, set, frozenset, deque)):
            stack.extend(item)
        else:
            slots = getattr(type(item), "__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if hasattr(item, name):
                    stack.append(getattr(item, name))
            holder = getattr(item, "__dict__", None)
            if holder is not None:
                stack.append(holder)
    return total


def strings_size(values) -> int:
    """A list of strings (a statement's literal values), the list included."""
    return sys.getsizeof(values) + sum(sys.getsizeof(v) for v in values)


# How ``analysis_memory_mb`` is shared among what the analysis keeps; each is bounded in bytes and its
# evictions are counted (/metrics pgloupe_analysis_memory_bytes, pgloupe_analysis_evictions_total).
MEMORY_SHARES = {
    "fingerprint_texts": 0.15,  # recent statement texts -> their shape and literals (detectors.fingerprint)
    "fingerprint_shapes": 0.15,  # normalized shapes -> parsed facts
    "shape_stats": 0.10,  # per shape calls, time, rows (the advisor and SHOW FINGERPRINTS)
    "findings": 0.10,
    "open_units": 0.25,  # statements of units of work not judged yet
    "loops": 0.07,  # parent results and iterations of loops being traced, fan-out bursts (detectors.tracing)
    "keys": 0.03,  # where keys came from, per session and application (detectors.tenancy.Provenance)
    "prepared_statements": 0.10,  # named statements' texts, in the session trackers
    "schema_verdicts": 0.03,  # what each catalog snapshot told about a shape or a RowDescription (detectors.schema)
    "labels": 0.02,  # unseen table names, metric labels, first-seen and alerted maps
}


DEFAULT_ANALYSIS_MEMORY_MB = 256


def share(total_mb: float, table: str) -> int:
    """Bytes of ``analysis_memory_mb`` given to one table."""
    return int(total_mb * MEMORY_SHARES[table] * (1 << 20))
