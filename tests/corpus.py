"""The labelled corpus lives in proxy/workloads.py (the demo runs it too); tests import it from here."""

from proxy.workloads import (  # noqa: F401
    CORPUS_DETECTORS,
    SCHEMA,
    WORKLOADS,
    Result,
    Workload,
    prepare,
    report,
    run_corpus,
    score,
)
