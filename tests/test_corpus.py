"""Precision and recall of the detectors over the labelled corpus, through the real proxy and real drivers."""

from __future__ import annotations

import psycopg

from proxy.demo.corpus import CORPUS_DETECTORS, report, run_corpus, score


def test_detectors_find_the_seed_anti_patterns_and_little_else(pg, start_proxy):
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS corpus")
        conn.execute("CREATE DATABASE corpus")
    proxy = start_proxy(upstream=pg.dsn(database="corpus"), sections={"detectors": CORPUS_DETECTORS})
    results = run_corpus(proxy.background, proxy.dsn(database="corpus"), pg.dsn(database="corpus"))
    text = report(results)
    print(text)
    precision, recall = score(results)
    assert precision >= 0.95 and recall >= 0.95, text
    # every seed anti-pattern is among the positives, and every detector kind is exercised
    expected = set().union(*(r.workload.expect for r in results))
    assert len(expected) == 14, sorted(expected)
