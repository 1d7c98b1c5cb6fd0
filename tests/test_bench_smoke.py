"""The benchmark scripts run and measure something (numbers are read by people, not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_detector_benchmark_runs(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "bench/detectors.py", "--events", "30000", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["events"] == 30000 and results["events_per_second"] > 0
    assert results["fingerprint_hit_us"] < results["fingerprint_miss_us"]
    assert all(results[f"pgbench_{m}_{p}_us"] > 0 for m in ("simple", "prepared") for p in ("replay", "pipeline"))
    assert "events/s" in proc.stdout and "pgbench -S -M prepared statement" in proc.stdout


def _bench_modules():
    """bench/procs.py and bench/targets.py, imported as the benchmark scripts import them."""
    import importlib

    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module("procs"), importlib.import_module("targets")


def test_compare_counts_children_cpu_also_once_reaped():
    """pgloupe's CPU is its process plus its worker processes, even when a worker exits mid-run."""
    procs, targets = _bench_modules()
    before = procs.tree_cpu(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.3: pass\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while procs.cpu_seconds(child.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        live = procs.tree_cpu(os.getpid())
        assert child.pid in procs.child_pids(os.getpid()) and child.pid in live.pids
        assert live.children - before.children >= 0.25
    finally:
        child.kill()
        child.wait()
    reaped = procs.tree_cpu(os.getpid())  # the child's time is now in our cutime + cstime
    assert child.pid not in reaped.pids and reaped.children - live.children >= -0.01
    a = procs.TreeCpu(main=1.0, main_thread=0.5, children=2.0, pids=frozenset({1}))
    b = procs.TreeCpu(main=1.5, main_thread=0.8, children=4.0, pids=frozenset({1}))
    assert targets.Pgloupe("postgresql://x", 2).cpu_split(a, b) == (2.0, 0.5)  # workers forward
    fwd, analysis = targets.Pgloupe("postgresql://x", 0).cpu_split(a, b)  # the main thread forwards
    assert abs(fwd - 0.3) < 1e-9 and abs(analysis - 2.2) < 1e-9


@pytest.mark.slow
def test_compare_quick_runs(tmp_path):
    """bench/procs.py --quick end to end (about a minute; needs pgbench and pgbouncer)."""
    out = tmp_path / "procs.json"
    proc = subprocess.run([sys.executable, "bench/procs.py", "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode == 2 and "not found" in proc.stderr:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["parameters"]["workers"] == 1 and results["scaling"] == {}
    runs = [r for r in results["runs"] if r["target"] == "pgloupe"]
    assert runs and all(r["pgloupe_forwarding_cpu_s"] > 0 and "pgloupe_analysis_cpu_s" in r for r in runs)
    assert all(r["pgloupe_rss_workers_kb"] > 0 for r in runs)
    assert "CPU split over all runs: forwarding" in proc.stdout
    # --quick keeps the relay-only pgloupe (PGLOUPE_ANALYSE=false): select-only at 8 clients, both modes
    assert results["parameters"]["relay_only_clients"] == 8
    assert set(results["relay_only"]) == {"select-only simple c=8", "select-only prepared c=8"}
    relay = [r for r in results["runs"] if r["target"] == "pgloupe-relay"]
    assert len(relay) == 2 and all(r["pgloupe_statements_analysed"] == 0 and r["pgloupe_forwarding_cpu_s"] > 0
                                   for r in relay)
    assert results["relay_only_pgloupe"]["final_health"]["statements"] == 0
    assert "cost of analysis at c=8" in proc.stdout
