"""Traffic statistics for /metrics: statement counts, a latency histogram, rows and response bytes.

Labelled by statement type and, for the busiest fingerprints only, by fingerprint id: a fingerprint
gets its own label once it has run ``label_min_calls`` times and while fewer than
``max_fingerprint_labels`` have one; everything else is counted under ``fingerprint="other"``, so
the number of series stays bounded however many shapes the application sends.
"""

from __future__ import annotations

import threading
from bisect import bisect_left

from detectors.fingerprint import Fingerprint
from proxy.events import StatementEvent

# Bucket bounds in seconds, with the documents' 100 ms / 500 ms / 1 s thresholds among them.
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OTHER = "other"
MAX_COUNTED = 20_000  # shapes counted towards a label at once (about 4 MB)
_TYPES = {"SELECT": "select", "INSERT": "insert", "UPDATE": "update", "DELETE": "delete", "COPY": "copy",
          "TRANSACTION": "transaction", "COMMIT": "transaction", "ROLLBACK": "transaction"}


def statement_type(fp: Fingerprint) -> str:
    return _TYPES.get(fp.kind, "other")


class Series:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0


class TrafficStats:
    """Updated on the analysis thread, read by the metrics collector: guarded by one lock."""

    def __init__(self, max_fingerprint_labels: int = 50, label_min_calls: int = 20):
        self.max_labels = max_fingerprint_labels
        self.label_min_calls = label_min_calls
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], Series] = {}
        self._labelled: set[str] = set()
        self._own: dict[str, Series] = {}  # labelled fingerprint -> its series (also in _series once used)
        self._calls: dict[str, int] = {}  # calls of fingerprints not (yet) labelled; bounded below
        self.rows: dict[str, int] = {}
        self.response_bytes: dict[str, int] = {}

    def observe(self, ev: StatementEvent, fp: Fingerprint) -> None:
        kind = statement_type(fp)
        series = self._own.get(fp.id)  # a labelled shape's series, found with one lookup
        if series is None:
            label = self._maybe_label(fp.id, kind)
            with self._lock:
                series = self._series.get((kind, label))
                if series is None:
                    series = self._series[(kind, label)] = Series()
        with self._lock:
            series.buckets[bisect_left(BUCKETS, ev.duration)] += 1
            series.count += 1
            series.sum += ev.duration
            self.rows[kind] = self.rows.get(kind, 0) + (ev.rows or 0)
            self.response_bytes[kind] = self.response_bytes.get(kind, 0) + ev.response_bytes

    def _maybe_label(self, fp_id: str, kind: str) -> str:
        if len(self._labelled) >= self.max_labels:
            return OTHER
        calls = self._calls.get(fp_id, 0) + 1
        if calls >= self.label_min_calls:
            self._labelled.add(fp_id)
            with self._lock:  # (one label, one kind: a shape's statement type is its own)
                self._own[fp_id] = self._series[(kind, fp_id)] = Series()
            self._calls.pop(fp_id, None)
            return OTHER  # this call still counts under "other"; the next ones under its own label
        if len(self._calls) >= MAX_COUNTED:
            self._calls.clear()  # a flood of one-off shapes: start counting afresh
        self._calls[fp_id] = calls
        return OTHER

    def snapshot(self) -> tuple[list[tuple[str, str, list[int], int, float]], dict[str, int], dict[str, int]]:
        with self._lock:
            series = [(k, f, list(s.buckets), s.count, s.sum) for (k, f), s in self._series.items()]
            return series, dict(self.rows), dict(self.response_bytes)
