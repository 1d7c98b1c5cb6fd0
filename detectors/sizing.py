"""What an object kept by the analysis costs in memory, for the byte budgets of its caches and tables.

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


def deep_size(obj, _seen: set | None = None) -> int:
    seen = _seen if _seen is not None else set()
    stack = [obj]
    total = 0
    while stack:
        item = stack.pop()
        if id(item) in seen:
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
