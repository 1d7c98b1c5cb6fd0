"""The findings store in a running pgloupe, with real traffic: a restart keeps findings, first-seen
dates and counts; a corrupt or read-only file stops the start-up with a clear message; fixed then
regressed raises one alert; people acknowledge, ignore and mark deploys through the HTTP API and the
CLI; the CI gate judges "new since the store"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from .conftest import ROOT, wait_until
from .test_canary import Webhook

N_PLUS_ONE = "n_plus_one_select"


def prepare(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS st_items, st_orders")
        conn.execute("CREATE TABLE st_orders (id int PRIMARY KEY, note text)")
        conn.execute("CREATE TABLE st_items (id serial PRIMARY KEY, order_id int, sku text)")
        conn.execute("INSERT INTO st_orders SELECT g, 'n' FROM generate_series(1, 8) g")
        conn.execute("INSERT INTO st_items (order_id, sku) SELECT g % 8 + 1, 's' FROM generate_series(1, 32) g")


def n_plus_one(dsn: str, requests: int = 1, fixed: bool = False, comment: str = "") -> None:
    """One request per connection: the order list, then each order's items one by one (or in one query)."""
    for _ in range(requests):
        with psycopg.connect(dsn, autocommit=True) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM st_orders ORDER BY id LIMIT 8" + comment).fetchall()]
            if fixed:
                conn.execute("SELECT order_id, sku FROM st_items WHERE order_id = ANY(%s)", (ids,)).fetchall()
            else:
                for i in ids:
                    conn.execute("SELECT sku FROM st_items WHERE order_id = %s", (i,)).fetchall()


def found(app, kind: str = N_PLUS_ONE) -> dict | None:
    return next((f for f in app.all_findings() if f["kind"] == kind and "st_items" in f["tables"]), None)


def store_settings(tmp_path: Path, **extra) -> dict:
    return {"state_dir": str(tmp_path / "state"), "store_flush_s": 0.2,
            "sections": {"detectors": {"unit_gap_ms": 100}}, **extra}


def test_restart_keeps_findings_first_seen_and_counts(pg, start_proxy, tmp_path):
    prepare(pg.dsn())
    first = start_proxy(**store_settings(tmp_path))
    n_plus_one(first.dsn(), 3)
    before = wait_until(lambda: (f := found(first.app)) and f["count"] == 3 and f, 20, "three N+1 occurrences")
    first.background.stop()  # its last batch goes out on the way down

    second = start_proxy(**store_settings(tmp_path))
    after = wait_until(lambda: found(second.app), 10, "the finding back from the store")
    assert (after["count"], after["statements"], after["first_seen"]) == (3, before["statements"], before["first_seen"])
    assert after["state"] == "open" and after["suggestion"] == before["suggestion"]
    n_plus_one(second.dsn(), 2)
    wait_until(lambda: found(second.app)["count"] == 5, 20, "the counts to continue from 3")
    assert found(second.app)["first_seen"] == before["first_seen"]
    # /metrics and the admin console see the stored findings too
    with urllib.request.urlopen(f"http://127.0.0.1:{second.http_port}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert f'pgloupe_findings{{kind="{N_PLUS_ONE}",severity=' in metrics
    assert "pgloupe_store_up 1.0" in metrics


def _serve_exit(args: list[str]) -> subprocess.CompletedProcess:
    """``pgloupe serve`` that is expected to refuse to start."""
    return subprocess.run([sys.executable, "-m", "proxy", "serve", "--listen", "127.0.0.1:0", "--http", "",
                           "--workers", "0", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_corrupt_store_file_stops_the_start_with_a_clear_message(pg, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "findings.sqlite3").write_bytes(b"garbage, not SQLite " * 200)
    proc = _serve_exit(["--upstream", pg.dsn(), "--state-dir", str(state)])
    assert proc.returncode == 2
    assert "is not a readable SQLite database" in proc.stderr and "Traceback" not in proc.stderr
    assert (state / "findings.sqlite3").read_bytes().startswith(b"garbage")


def test_a_read_only_store_file_stops_the_start_with_a_clear_message(pg, tmp_path, start_proxy):
    state = tmp_path / "state"
    first = start_proxy(**store_settings(tmp_path))  # a real store file, written by pgloupe
    first.background.stop()
    store = state / "findings.sqlite3"
    # root writes any file whatever its mode: the immutable attribute stops even root
    immutable = os.geteuid() == 0
    if immutable:
        if subprocess.run(["chattr", "+i", str(store)], capture_output=True).returncode != 0:
            pytest.skip("running as root on a file system without chattr +i: no file is read-only to root")
    else:
        os.chmod(store, 0o444)
    try:
        proc = _serve_exit(["--upstream", pg.dsn(), "--state-dir", str(state)])
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(store)], check=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "is read-only" in proc.stderr and "Traceback" not in proc.stderr


def _post(port: int, path: str, payload, token: str | None = None, ctype: str = "application/json"):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": ctype, **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _get(port: int, path: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers),
                                timeout=10) as resp:
        return json.loads(resp.read())


def test_people_acknowledge_ignore_and_mark_deploys(pg, start_proxy, tmp_path):
    prepare(pg.dsn())
    hook = Webhook()
    try:
        proxy = start_proxy(http_token="tok", **store_settings(
            tmp_path, sections={"detectors": {"unit_gap_ms": 100},
                                "alerts": {"webhooks": [hook.url], "min_severity": "info", "cooldown_s": 0}}))
        port = proxy.http_port
        n_plus_one(proxy.dsn())
        finding = wait_until(lambda: found(proxy.app), 20, "the N+1")
        proxy.app.store.flush_now()
        key = {"kind": finding["kind"], "fingerprint": finding["fingerprint"]}
        # refused: no token, a form post (what another site's page could send), no reason, not JSON, a bad state
        assert _post(port, "/api/findings/state", {**key, "state": "ignored", "reason": "x"})[0] == 401
        assert _post(port, "/api/findings/state", b"kind=x", "tok", "application/x-www-form-urlencoded")[0] == 415
        assert _post(port, "/api/findings/state", {**key, "state": "ignored"}, "tok")[0] == 400
        assert _post(port, "/api/findings/state", b"{not json", "tok")[0] == 400
        assert _post(port, "/api/findings/state", b"[" * 5000, "tok")[0] == 400  # nested past the recursion limit
        assert _post(port, "/api/findings/state", b"x" * 20000, "tok")[0] == 413
        assert _post(port, "/api/findings/state", {**key, "state": "fixed", "reason": "x"}, "tok")[0] == 400
        assert _post(port, "/api/findings/state", {"kind": "slow_query", "fingerprint": "none", "state": "ignored",
                                                   "reason": "x"}, "tok")[0] == 404
        status, body = _post(port, "/api/findings/state",
                             {**key, "state": "ignored", "reason": "the admin export runs once a night", "by": "ana"}, "tok")
        assert status == 200 and body["state"] == "ignored"
        shown = found(proxy.app)
        assert (shown["state"], shown["state_reason"], shown["state_by"]) == (
            "ignored", "the admin export runs once a night", "ana")
        ignored = _get(port, "/api/findings?state=ignored", "tok")["findings"]
        assert [f["fingerprint"] for f in ignored] == [finding["fingerprint"]]
        # an ignored finding raises no alert, even when it grows worse
        def about_it() -> int:  # (other tests' tables in the database bring advice alerts of their own)
            return sum(finding["fingerprint"].encode() in body for body in hook.bodies)
        alerts_before = about_it()
        proxy.app.alerts.notify({**finding, "severity": "critical"})
        time.sleep(0.3)
        assert about_it() == alerts_before and proxy.app.alerts.muted >= 1

        # deploy markers: HTTP, the CLI, and a sqlcommenter tag
        assert _post(port, "/api/deploys", {"name": "v41"}, "tok")[0] == 200
        mark = subprocess.run([sys.executable, "-m", "proxy", "mark", "--deploy", "v42", "--state-dir",
                               str(tmp_path / "state")], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert mark.returncode == 0, mark.stderr
        n_plus_one(proxy.dsn(), fixed=True, comment=" /*deploy='v43',route='%2Forders'*/")
        deploys = wait_until(lambda: [d["name"] for d in _get(port, "/api/deploys", "tok")["deploys"]][:3]
                             == ["v43", "v42", "v41"] and _get(port, "/api/deploys", "tok")["deploys"], 10,
                             "three deploy markers, newest first")
        assert [d["source"] for d in deploys[:3]] == ["sqlcommenter", "cli", "http"]
        # a finding first seen after the latest deploy is new
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            for i in range(6):
                conn.execute("SELECT sku FROM st_items WHERE id = %s", (i,)).fetchall()
                conn.execute("SELECT pg_sleep(0)")
        assert _post(port, "/api/findings/state", {**key, "state": "open"}, "tok")[0] == 200
        history = _get(port, f"/api/findings/history?kind={key['kind']}&fingerprint={key['fingerprint']}", "tok")
        assert sum(d["count"] for d in history["days"]) == found(proxy.app)["count"]
        assert list(history["replicas"].values()) == [found(proxy.app)["count"]]
    finally:
        hook.close()


def test_only_loopback_clients_change_findings_without_a_token():
    from proxy.service.http import _is_loopback
    assert _is_loopback(("127.0.0.1", 5000)) and _is_loopback(("::1", 5000, 0, 0))
    assert not _is_loopback(("10.0.0.7", 5000)) and not _is_loopback("") and not _is_loopback(None)


def test_new_since_a_deploy(pg, start_proxy, tmp_path):
    prepare(pg.dsn())
    proxy = start_proxy(**store_settings(tmp_path))
    n_plus_one(proxy.dsn())
    wait_until(lambda: found(proxy.app), 20, "the N+1")
    assert found(proxy.app)["state"] == "open"
    proxy.app.store.mark_deploy("v2", "http", at=time.time() - 3600).result(10)  # deployed before it was first seen
    proxy.app.store.flush_now()
    assert found(proxy.app)["state"] == "new"


def test_fixed_then_regressed_raises_one_alert(pg, start_proxy, tmp_path):
    """An N+1, its fix for longer than the fixed window, then the N+1 again: fixed, then regressed, one alert."""
    prepare(pg.dsn())
    hook = Webhook()
    try:
        proxy = start_proxy(**store_settings(
            tmp_path, fixed_after_s=1.5, fixed_min_count=2,
            sections={"detectors": {"unit_gap_ms": 100},
                      "alerts": {"webhooks": [hook.url], "min_severity": "critical", "cooldown_s": 600}}))
        n_plus_one(proxy.dsn(), 2)
        wait_until(lambda: (f := found(proxy.app)) and f["count"] == 2, 20, "two N+1 occurrences")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and found(proxy.app)["state"] != "fixed":
            n_plus_one(proxy.dsn(), fixed=True)  # the fix is deployed and serving
            time.sleep(0.3)
        assert found(proxy.app)["state"] == "fixed"
        assert not hook.bodies  # warnings below min_severity: nothing so far
        n_plus_one(proxy.dsn(), 3)
        wait_until(lambda: found(proxy.app)["state"] == "regressed", 20, "the finding to regress")
        wait_until(lambda: hook.bodies, 10, "the regression alert")
        time.sleep(1.0)  # later batches of the same N+1 must not alert again
        n_plus_one(proxy.dsn(), 1)
        proxy.app.store.flush_now()
        time.sleep(0.5)
        alerts = [json.loads(b) for b in hook.bodies]
        assert len(alerts) == 1, alerts
        assert alerts[0]["finding"]["regressed"] and "REGRESSED" in alerts[0]["text"]
        assert alerts[0]["finding"]["kind"] == N_PLUS_ONE
        assert found(proxy.app)["regressed_at"] is not None
    finally:
        hook.close()


def test_the_gate_fails_only_on_what_the_store_does_not_know(pg, tmp_path):
    prepare(pg.dsn())
    store = tmp_path / "ci-store.sqlite3"
    script = tmp_path / "workload.py"
    script.write_text(f"import os, sys\nsys.path.insert(0, {str(ROOT)!r})\nimport psycopg\n"
                      "from tests.test_store_service import n_plus_one\n"
                      "n_plus_one(os.environ['DATABASE_URL'], 2)\n"
                      "if os.environ.get('ALSO'):  # a second N+1, of another shape\n"
                      "    with psycopg.connect(os.environ['DATABASE_URL'], autocommit=True) as conn:\n"
                      "        for i in range(1, 9):\n"
                      "            conn.execute('SELECT note FROM st_orders WHERE id = %s', (i,)).fetchall()\n")

    def gate(*flags: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "proxy", "run", "--upstream", pg.dsn(), "--fail-on", "warning", *flags, "--",
             sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=180,
            env=dict(os.environ, PGLOUPE_UPSTREAM_SSLMODE="disable", **env))

    missing = gate("--store", str(store))  # nothing has filled it yet: say so rather than call all new
    assert missing.returncode == 2 and "does not exist" in missing.stderr, missing.stderr[-2000:]
    recorded = gate("--store", str(store), "--record")  # main: new, so it fails, and it is recorded
    assert recorded.returncode == 1, recorded.stdout[-2000:]
    assert gate("--store", str(store)).returncode == 0  # a pull request: known to the store now
    # read only: a new N+1 fails, and fails again (the first run did not make it known)
    assert gate("--store", str(store), ALSO="1").returncode == 1
    immutable = os.geteuid() == 0  # and a file pgloupe cannot write will do
    if immutable:
        subprocess.run(["chattr", "+i", str(store)], check=True)
    else:
        os.chmod(store, 0o444)
    try:
        again = gate("--store", str(store), ALSO="1")
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(store)], check=True)
    assert again.returncode == 1, again.stderr[-2000:]
    assert "--record needs --store" in gate("--record").stderr
    unreachable = gate("--store", "postgresql://nobody:pw-4f1c@127.0.0.1:1/none")
    assert unreachable.returncode == 2 and "findings store" in unreachable.stderr
    assert "pw-4f1c" not in unreachable.stderr + unreachable.stdout


def test_post_rules_of_the_http_server():
    """Without a token only a loopback listener takes changes from loopback clients; bodies are bounded,
    never chunked, and a client that asks to continue is told to."""
    import asyncio

    from proxy.service.http import HttpServer, json_response

    async def main() -> dict:
        got = {}

        async def posted(payload):
            got.update(payload)
            return json_response({"ok": True})

        async def raw(port: int, request: bytes, body: bytes = b"") -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            if body:
                interim = await reader.readuntil(b"\r\n\r\n")  # 100 Continue, then the body
                assert interim.startswith(b"HTTP/1.1 100"), interim
                writer.write(body)
            answer = await reader.read()
            writer.close()
            return answer.split(b" ", 2)[1]

        statuses = {}
        for host in ("127.0.0.1", "0.0.0.0"):
            server = HttpServer(host, 0, {}, posts={"/p": posted})
            await server.start()
            head = "POST /p HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            statuses[host] = await raw(server.port, (head + "Content-Length: 2\r\n\r\n{}").encode())
            if host == "127.0.0.1":
                statuses["huge"] = await raw(server.port, (head + "Content-Length: " + "9" * 5000 + "\r\n\r\n").encode())
                statuses["chunked"] = await raw(server.port, (head + "Transfer-Encoding: chunked\r\nContent-Length: 2"
                                                              "\r\n\r\n{}").encode())
                statuses["continue"] = await raw(server.port, (head + "Content-Length: 12\r\nExpect: 100-continue"
                                                               "\r\n\r\n").encode(), b'{"a": "b c"}')
            await server.close()
        return {**statuses, "got": got}

    result = asyncio.run(main())  # (loopback only: the 0.0.0.0 listener is reached on 127.0.0.1)
    assert result["127.0.0.1"] == b"200" and result["0.0.0.0"] == b"403"
    assert (result["huge"], result["chunked"], result["continue"]) == (b"413", b"400", b"200")
    assert result["got"] == {"a": "b c"}


def test_the_gate_keeps_to_its_own_store_without_store(pg, tmp_path):
    """PGLOUPE_STORE (meant for serve) does not make a gate run a writer of the shared store; a state
    directory it cannot write costs the run its history, not its verdict."""
    prepare(pg.dsn())
    shared = tmp_path / "shared.sqlite3"
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    script = tmp_path / "workload.py"
    script.write_text(f"import os, sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                      "from tests.test_store_service import n_plus_one\nn_plus_one(os.environ['DATABASE_URL'], 2)\n")
    run = subprocess.run(
        [sys.executable, "-m", "proxy", "run", "--upstream", pg.dsn(), "--fail-on", "never", "--",
         sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=180,
        env=dict(os.environ, PGLOUPE_UPSTREAM_SSLMODE="disable", PGLOUPE_STORE=str(shared),
                 PGLOUPE_STATE_DIR=str(blocked / "state")))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "n_plus_one_select" in run.stdout and "kept in memory only" in run.stderr
    assert not shared.exists()
