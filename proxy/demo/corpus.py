"""The seed workloads as a labelled corpus: run through a proxy, scored per (workload, kind) pair as
precision and recall (tests/test_corpus.py, scripts/corpus.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from proxy.demo.workloads import WORKLOADS, Workload, prepare

CORPUS_DETECTORS = {"long_transaction_ms": [1000, 10000]}


@dataclass
class Result:
    workload: Workload
    found: set[str] = field(default_factory=set)

    @property
    def true_positives(self) -> set[str]:
        return self.found & self.workload.expect

    @property
    def false_positives(self) -> set[str]:
        return self.found - self.workload.expect

    @property
    def false_negatives(self) -> set[str]:
        return self.workload.expect - self.found


def run_corpus(background, proxy_dsn: str, direct_dsn: str) -> list[Result]:
    """Run every workload through the proxy of ``background`` (a BackgroundApp) and collect findings."""
    app = background.app
    prepare(direct_dsn)
    assert background.call(app.reviews.refresh), "the catalog could not be read"
    for w in WORKLOADS:
        w.run(proxy_dsn)
    _drain(background)
    findings = app.pipeline.findings.snapshot()
    results = []
    for w in WORKLOADS:
        results.append(Result(w, {f["kind"] for f in findings if w.name in f["applications"]}))
    return results


def _drain(background, timeout: float = 30.0) -> None:
    """Wait until every event the proxy accepted has been analysed, then close all units."""
    app = background.app
    deadline = time.monotonic() + timeout
    while app.pipeline.events < app.queue.accepted and time.monotonic() < deadline:
        time.sleep(0.05)
    background.call(app.analysis.call, app.pipeline.flush)


def score(results: list[Result]) -> tuple[float, float]:
    tp = sum(len(r.true_positives) for r in results)
    fp = sum(len(r.false_positives) for r in results)
    fn = sum(len(r.false_negatives) for r in results)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return precision, recall


def report(results: list[Result]) -> str:
    lines = [f"{'workload':34} {'expected':44} {'found':44} verdict"]
    for r in results:
        verdict = "ok" if not r.false_positives and not r.false_negatives else (
            ("missed " + ",".join(sorted(r.false_negatives)) + " " if r.false_negatives else "")
            + ("false " + ",".join(sorted(r.false_positives)) if r.false_positives else ""))
        lines.append(f"{r.workload.name:34} {','.join(sorted(r.workload.expect)) or '-':44} "
                     f"{','.join(sorted(r.found)) or '-':44} {verdict}")
    precision, recall = score(results)
    lines.append(f"\nprecision {precision:.3f}  recall {recall:.3f}  "
                 f"({sum(r.workload.positive for r in results)} positive and "
                 f"{sum(not r.workload.positive for r in results)} negative workloads)")
    return "\n".join(lines)
