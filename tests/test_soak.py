"""Soak (marked slow; run with ``make test ARGS="-m slow -k soak"``): 500 concurrent clients through
``pgloupe serve --workers 2`` running reads, writes, COPY and pipelines for SOAK_SECONDS (default 120).

Passes when no client saw an error, pgloupe's file descriptors come back to where they were, and its
resident memory after the warm-up stays flat (within 25% and 40 MB) to the end. Loopback only.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import asyncpg
import pytest

from proxy.demo.embedded import EmbeddedPostgres

from .conftest import start_serve

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "500"))
SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))


def _tree(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except OSError:
                continue
    return [pid, *kids]


def _fds(pids: list[int]) -> int:
    return sum(len(os.listdir(f"/proc/{p}/fd")) for p in pids if os.path.exists(f"/proc/{p}"))


def _rss_kb(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


async def _client(dsn: str, n: int, until: float, errors: list, counts: dict) -> None:
    rng = random.Random(n)
    conn = await asyncpg.connect(dsn, timeout=60)
    try:
        while time.monotonic() < until:
            kind = rng.random()
            try:
                if kind < 0.5:
                    await conn.fetchrow("SELECT id, body FROM soak_items WHERE id = $1", rng.randint(1, 1000))
                elif kind < 0.75:
                    async with conn.transaction():
                        await conn.execute("INSERT INTO soak_log (client, note) VALUES ($1, $2)", n, "w")
                        await conn.execute("UPDATE soak_items SET hits = hits + 1 WHERE id = $1", rng.randint(1, 1000))
                elif kind < 0.9:
                    await conn.executemany("INSERT INTO soak_log (client, note) VALUES ($1, $2)",
                                           [(n, "p") for _ in range(5)])  # one pipelined round trip
                else:
                    await conn.copy_records_to_table("soak_log", records=[(n, "c")] * 20, columns=["client", "note"])
                counts[kind < 0.5] = counts.get(kind < 0.5, 0) + 1
            except Exception as exc:  # every client error fails the soak; keep the first few
                errors.append(f"client {n}: {type(exc).__name__}: {exc}")
                if len(errors) > 20:
                    return
            await asyncio.sleep(rng.uniform(0.005, 0.05))
    finally:
        await conn.close()


@pytest.mark.slow
def test_soak_500_clients():
    server = EmbeddedPostgres(settings={"max_connections": str(CLIENTS + 50)}).start()
    proc = None
    try:
        with subprocess.Popen([server.bindir / "psql", "-X", "-q", "-h", server.host, "-p", str(server.port),
                               "-U", "postgres", "-c",
                               "CREATE TABLE soak_items (id int PRIMARY KEY, body text, hits int DEFAULT 0); "
                               "INSERT INTO soak_items SELECT g, md5(g::text) FROM generate_series(1, 1000) g; "
                               "CREATE TABLE soak_log (id bigserial PRIMARY KEY, client int, note text)"]) as psql:
            assert psql.wait(60) == 0
        proc, listen, http = start_serve(["--workers", "2", "--upstream", server.dsn(), "--log-level", "warning"])
        pids = _tree(proc.pid)
        fds_idle = _fds(pids)
        dsn = f"postgresql://postgres@127.0.0.1:{listen}/postgres"
        errors: list[str] = []
        counts: dict = {}
        samples: list[tuple[float, int]] = []

        async def soak():
            until = time.monotonic() + SECONDS
            tasks = [asyncio.create_task(_client(dsn, n, until, errors, counts)) for n in range(CLIENTS)]
            start = time.monotonic()
            while not all(t.done() for t in tasks):
                await asyncio.sleep(5)
                samples.append((time.monotonic() - start, _rss_kb(pids)))
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(soak())
        assert not errors, errors[:10]
        assert sum(counts.values()) > CLIENTS * 10
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=10) as resp:
            health = json.load(resp)
        assert health["upstream_errors"] == 0 and health["analysis_errors"] == 0
        time.sleep(2)
        assert _fds(pids) <= fds_idle + 4, (fds_idle, _fds(pids))  # every client's sockets were closed
        warm = [rss for t, rss in samples if t >= SECONDS / 4]
        assert warm, samples
        growth = max(warm) - warm[0]
        assert growth < max(0.25 * warm[0], 40 * 1024), samples
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        server.stop()
