"""The detector benchmark script runs and measures something (numbers are read by people, not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_detector_benchmark_runs(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "bench/detectors.py", "--events", "30000", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["events"] == 30000 and results["events_per_second"] > 0
    assert results["fingerprint_hit_us"] < results["fingerprint_miss_us"]
    assert "events/s" in proc.stdout
