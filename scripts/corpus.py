#!/usr/bin/env python3
"""Run the labelled corpus (proxy/demo/corpus.py) against a throwaway PostgreSQL and print precision and recall.

    .venv/bin/python scripts/corpus.py            # exit status 1 when either is below 0.95
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.config import load  # noqa: E402
from proxy.demo.corpus import CORPUS_DETECTORS, report, run_corpus, score  # noqa: E402
from proxy.demo.embedded import EmbeddedPostgres  # noqa: E402
from proxy.logs import configure  # noqa: E402
from proxy.service.background import BackgroundApp  # noqa: E402


def main() -> int:
    configure("console", "error")
    with EmbeddedPostgres() as pg:
        settings = load(None, env={}, sections={"detectors": CORPUS_DETECTORS}, upstream=pg.dsn(),
                        listen="127.0.0.1:0", http=None, upstream_sslmode="disable", log_level="error")
        background = BackgroundApp(settings)
        app = background.start()
        try:
            results = run_corpus(background, f"postgresql://postgres@127.0.0.1:{app.proxy.port}/postgres", pg.dsn())
        finally:
            background.stop()
    print(report(results))
    precision, recall = score(results)
    return 0 if precision >= 0.95 and recall >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
