"""The deployment and monitoring files: they parse, Prometheus's and Alertmanager's own tools accept them,
the pgloupe config they carry is accepted by pgloupe, and the ports, paths and names they share agree.

No container engine runs here: what can be checked without one is checked (the dashboards' queries run
against a real Prometheus in tests/test_dashboards.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from detectors.config import DetectorConfig
from proxy.config import load, parse_address
from proxy.demo.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
K8S = DEPLOY / "k8s"
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "pgloupe.json"
GRAFANA_DASHBOARDS_PATH = "/var/lib/grafana/dashboards"

PROXY_PORT, HTTP_PORT = 6432, 9187
YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml"), *GRAFANA.rglob("*.yml"),
                     *GRAFANA.rglob("*.yaml")])

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
needs_amtool = pytest.mark.skipif(AMTOOL is None, reason="amtool not installed (Debian package prometheus-alertmanager)")


def load_yaml(path: Path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.relative_to(ROOT)}: expected one YAML document, found {len(docs)}"
    return docs[0]


def run(*cmd: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def port_of(address: str) -> int:
    return parse_address(address, "address")[1]


# ------------------------------------------------------------------ every file parses


def test_the_files_exist():
    expected = [
        "deploy/Dockerfile", "deploy/compose.yml", "deploy/pgloupe.toml",
        "deploy/prometheus/prometheus.yml", "deploy/prometheus/alerts.yml", "deploy/prometheus/alerts_test.yml",
        "deploy/alertmanager/alertmanager.yml",
        "deploy/k8s/configmap.yaml", "deploy/k8s/deployment.yaml", "deploy/k8s/service.yaml",
        "deploy/k8s/servicemonitor.yaml",
        "grafana/dashboards/pgloupe.json", "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/pgloupe.yml",
    ]
    missing = [p for p in expected if not (ROOT / p).is_file()]
    assert not missing, f"missing: {missing}"


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path):
    assert isinstance(load_yaml(path), dict)


# ------------------------------------------------------------------ Prometheus


@needs_promtool
def test_promtool_check_config():
    # also checks the rule files it names (alerts.yml), relative to the config's directory
    run(PROMTOOL, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))


@needs_promtool
def test_promtool_check_rules():
    out = run(PROMTOOL, "check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_promtool_rule_unit_tests_pass():
    out = run(PROMTOOL, "test", "rules", "alerts_test.yml", cwd=PROMETHEUS_DIR)
    assert "SUCCESS" in out.stdout


def alert_rules() -> dict[str, dict]:
    rules = {}
    for group in load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"]:
        for rule in group["rules"]:
            assert "alert" in rule, f"recording rule in alerts.yml: {rule}"
            assert rule["alert"] not in rules, f"duplicate alert {rule['alert']}"
            rules[rule["alert"]] = rule
    return rules


def test_prometheus_config_scrapes_pgloupe_and_sends_to_alertmanager():
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    targets = [t for job in config["scrape_configs"] if job["job_name"] == "pgloupe"
               for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"pgloupe:{HTTP_PORT}"]
    managers = [t for am in config["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert managers == ["alertmanager:9093"]


# The documents' thresholds and pgloupe's own health: alert -> what its expression must say.
EXPECTED_ALERTS = {
    "PgloupeStatementLatencyP99High": ["histogram_quantile(0.99", "rate(pgloupe_statement_duration_seconds_bucket",
                                       "> 0.5"],
    "PgloupeConnectionSaturation": ["pgloupe_db_connection_ratio > 0.9"],
    "PgloupeIndexHitRatioLow": ["pgloupe_db_index_hit_ratio < 0.95"],
    "PgloupeSeqScanRatioHigh": ["pgloupe_db_seq_scan_ratio > 0.05"],
    "PgloupeDeadTupleRatioHigh": ["pgloupe_db_dead_tuple_ratio > 0.10"],
    "PgloupeNPlusOneAppeared": ["pgloupe_findings", "n_plus_one_", "offset"],
    "PgloupeNPlusOneCostly": ["pgloupe_findings", "n_plus_one_", "error|critical"],
    "PgloupeCrossTenantFinding": ['pgloupe_findings{kind="cross_tenant"}', "> 0"],
    "PgloupeEventsDropped": ["increase(pgloupe_events_dropped_total"],
    "PgloupeUpstreamConnectErrors": ["increase(pgloupe_upstream_connect_errors_total"],
    "PgloupeCatalogErrors": ["increase(pgloupe_catalog_errors_total"],
    "PgloupeTargetDown": ["up{", "== 0"],
    "PgloupeAnalysisStopped": ["pgloupe_analysis_up == 0"],
}


def test_alerts_cover_the_thresholds_with_severity_and_annotations():
    rules = alert_rules()
    assert set(rules) == set(EXPECTED_ALERTS)
    for name, fragments in EXPECTED_ALERTS.items():
        rule = rules[name]
        expr = " ".join(rule["expr"].split())
        for fragment in fragments:
            assert fragment in expr, f"{name}: {fragment!r} not in {expr!r}"
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        annotations = rule["annotations"]
        assert annotations.get("summary") and annotations.get("description"), name
        # the threshold is named, and the way to fix it
        text = annotations["summary"] + " " + annotations["description"]
        assert re.search(r"threshold", text, re.I), f"{name}: no threshold in the annotations"
        assert re.search(r"\bFix\b", annotations["description"]), f"{name}: no fix in the description"
        # windows of rate()/increase() are fixed in rules: Grafana's variables must not leak in
        assert "$__" not in rule["expr"], name


def test_every_alert_has_firing_and_not_firing_unit_tests():
    rules = alert_rules()
    tests = load_yaml(PROMETHEUS_DIR / "alerts_test.yml")
    assert tests["rule_files"] == ["alerts.yml"]
    fires, silent = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert fires >= set(rules), f"alerts never tested firing: {sorted(set(rules) - fires)}"
    assert silent >= set(rules), f"alerts never tested not firing: {sorted(set(rules) - silent)}"


# ------------------------------------------------------------------ Alertmanager


@needs_amtool
def test_amtool_check_config():
    out = run(AMTOOL, "check-config", str(ALERTMANAGER_CONFIG))
    assert "SUCCESS" in out.stdout


@needs_amtool
@pytest.mark.parametrize("severity", ["critical", "warning"])
def test_every_alert_routes_to_the_webhook(severity):
    for name, rule in alert_rules().items():
        if rule["labels"]["severity"] != severity:
            continue
        run(AMTOOL, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
            "--verify.receivers=pgloupe-webhook", f"alertname={name}", f"severity={severity}")


def test_alertmanager_groups_by_alertname_into_a_webhook():
    config = load_yaml(ALERTMANAGER_CONFIG)
    route = config["route"]
    assert "alertname" in route["group_by"]
    receivers = {r["name"]: r for r in config["receivers"]}
    assert route["receiver"] in receivers
    for sub in route.get("routes", []):
        assert sub["receiver"] in receivers
        assert "group_by" not in sub or "alertname" in sub["group_by"]
    hooks = receivers[route["receiver"]]["webhook_configs"]
    assert hooks and all(h["url"].startswith("http") for h in hooks)


# ------------------------------------------------------------------ pgloupe's config


def configmap_toml() -> str:
    return load_yaml(K8S / "configmap.yaml")["data"]["pgloupe.toml"]


@pytest.mark.parametrize("source", ["deploy/pgloupe.toml", "deploy/k8s/configmap.yaml"])
def test_pgloupe_accepts_the_config(source, tmp_path):
    if source.endswith(".toml"):
        path = ROOT / source
    else:
        path = tmp_path / "pgloupe.toml"
        path.write_text(configmap_toml())
    settings = load(str(path), env={})
    config = DetectorConfig.from_mapping(settings.extra.get("detectors"))
    assert "silence" in settings.extra["detectors"], "no [detectors.silence] table"
    assert port_of(settings.listen) == PROXY_PORT and port_of(settings.http) == HTTP_PORT
    assert settings.listen.startswith("0.0.0.0:") and settings.http.startswith("0.0.0.0:")
    # the documents' thresholds, which the alert rules and the dashboard repeat
    assert config.index_hit_ratio == (0.99, 0.95)
    assert config.seq_scan_ratio == (0.01, 0.05)
    assert config.dead_tuple_ratio == (0.05, 0.10)
    assert config.connection_ratio == (0.80, 0.90)
    assert tuple(config.slow_query_ms) == (100, 500, 1000)


def test_configmap_carries_the_same_config_as_deploy_toml():
    assert tomllib.loads(configmap_toml()) == tomllib.loads((DEPLOY / "pgloupe.toml").read_text())


# ------------------------------------------------------------------ Dockerfile, compose, Kubernetes


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


def test_dockerfile():
    instructions = dockerfile_instructions()
    words = [w for w, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    exposed = {int(p.split("/")[0]) for w, rest in instructions if w == "EXPOSE" for p in rest.split()}
    assert exposed == {PROXY_PORT, HTTP_PORT}
    assert any(w == "RUN" and "pip install" in rest for w, rest in instructions)
    user = [rest for w, rest in instructions if w == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN"), "a RUN after USER runs as the user"
    healthcheck = next(rest for w, rest in instructions if w == "HEALTHCHECK")
    assert "urllib" in healthcheck and "/healthz" in healthcheck
    assert json.loads(next(rest for w, rest in instructions if w == "ENTRYPOINT")) == ["pgloupe", "serve"]
    env = dockerfile_env()
    assert port_of(env["PGLOUPE_LISTEN"]) == PROXY_PORT and port_of(env["PGLOUPE_HTTP"]) == HTTP_PORT
    # what it copies exists (the build context is the repository root)
    for w, rest in instructions:
        if w == "COPY":
            for src in rest.split()[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"


def test_the_container_command_and_healthcheck_work(pg, tmp_path):
    """ENTRYPOINT with compose's environment (loopback ports, the test server), probed by the HEALTHCHECK."""
    instructions = dockerfile_instructions()
    entrypoint = json.loads(next(rest for w, rest in instructions if w == "ENTRYPOINT"))
    healthcheck = next(rest for w, rest in instructions if w == "HEALTHCHECK")
    probe = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert probe[:2] == ["python", "-c"]
    service = compose()["services"]["pgloupe"]
    env = {**dockerfile_env(), **service["environment"]}
    # the image makes its state directory; here the test's own stands in for it
    assert env["PGLOUPE_STATE_DIR"] == "/var/lib/pgloupe"
    assert any(v.endswith(":/var/lib/pgloupe") for v in service["volumes"]), "compose keeps the findings store"
    env.update(PGLOUPE_CONFIG=volume_map(service)[env["PGLOUPE_CONFIG"]], PGLOUPE_UPSTREAM=pg.dsn(),
               PGLOUPE_STATE_DIR=str(tmp_path / "state"),
               PGLOUPE_LISTEN=f"127.0.0.1:{free_port()}", PGLOUPE_HTTP=f"127.0.0.1:{free_port()}",
               PATH=os.environ.get("PATH", ""))

    def healthy() -> bool:
        result = subprocess.run([sys.executable, "-c", probe[2]], env=env, capture_output=True, timeout=10)
        return result.returncode == 0

    executable = Path(sys.executable).parent / entrypoint[0]
    log = tmp_path / "pgloupe.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(executable), *entrypoint[1:]], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while not healthy():
                assert process.poll() is None, f"pgloupe serve exited {process.returncode}:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"/healthz not up within 20 s:\n{log.read_text()}"
                time.sleep(0.2)
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
    assert process.returncode == 0, f"pgloupe serve did not stop cleanly on SIGTERM:\n{log.read_text()}"
    assert not healthy(), "the healthcheck passes with pgloupe stopped"


def compose() -> dict:
    return load_yaml(DEPLOY / "compose.yml")


def volume_map(service: dict) -> dict[str, str]:
    """container path -> host path (resolved from deploy/), for bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        if host.startswith("."):
            out[container] = str((DEPLOY / host).resolve())
    return out


def test_compose_services_agree_with_pgloupe():
    services = compose()["services"]
    assert set(services) >= {"postgres", "pgloupe", "prometheus", "alertmanager", "grafana"}
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:15") and postgres["healthcheck"]["test"]
    pgloupe = services["pgloupe"]
    build = pgloupe["build"]
    assert (DEPLOY / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
    assert pgloupe["depends_on"]["postgres"]["condition"] == "service_healthy"
    env = pgloupe["environment"]
    assert env["PGLOUPE_LISTEN"] == f"0.0.0.0:{PROXY_PORT}" and env["PGLOUPE_HTTP"] == f"0.0.0.0:{HTTP_PORT}"
    assert {int(p.split(":")[-1]) for p in pgloupe["ports"]} == {PROXY_PORT, HTTP_PORT}
    exposed = {int(rest) for w, r in dockerfile_instructions() if w == "EXPOSE" for rest in r.split()}
    assert {int(p.split(":")[-1]) for p in pgloupe["ports"]} == exposed
    mounts = volume_map(pgloupe)
    assert mounts[env["PGLOUPE_CONFIG"]] == str((DEPLOY / "pgloupe.toml").resolve())
    # what pgloupe reads in the container: this environment over the mounted file
    settings = load(None, env={**env, "PGLOUPE_CONFIG": mounts[env["PGLOUPE_CONFIG"]]})
    DetectorConfig.from_mapping(settings.extra.get("detectors"))
    assert settings.upstream_target.host == "postgres"
    assert port_of(settings.listen) == PROXY_PORT and port_of(settings.http) == HTTP_PORT
    # the token pgloupe asks for is the one Prometheus sends
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "pgloupe"]
    assert job["authorization"]["type"] == "Bearer"
    token_file = PROMETHEUS_DIR / job["authorization"]["credentials_file"]
    assert settings.http_token and token_file.read_text().strip() == settings.http_token


def test_compose_monitoring_services_mount_the_files():
    services = compose()["services"]
    prometheus, alertmanager, grafana = services["prometheus"], services["alertmanager"], services["grafana"]
    assert prometheus["image"].startswith("prom/prometheus")
    assert volume_map(prometheus)["/etc/prometheus"] == str(PROMETHEUS_DIR)
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert volume_map(alertmanager)["/etc/alertmanager"] == str(ALERTMANAGER_CONFIG.parent)
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in alertmanager["command"]
    assert grafana["image"].startswith("grafana/grafana")
    mounts = volume_map(grafana)
    assert mounts["/etc/grafana/provisioning"] == str(GRAFANA / "provisioning")
    assert mounts[GRAFANA_DASHBOARDS_PATH] == str(DASHBOARD.parent)
    # the names Prometheus's config uses are the compose services
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    hosts = {t.split(":")[0] for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert hosts - {"localhost"} <= set(services)


def k8s(name: str) -> dict:
    return load_yaml(K8S / name)


def test_k8s_deployment():
    deployment = k8s("deployment.yaml")
    assert deployment["kind"] == "Deployment" and deployment["apiVersion"] == "apps/v1"
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(HTTP_PORT)
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert {p["containerPort"] for p in container["ports"]} == {PROXY_PORT, HTTP_PORT}
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz" and get["port"] == HTTP_PORT, probe
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    # the pod outlives pgloupe's SIGTERM drain
    drain = tomllib.loads(configmap_toml()).get("shutdown_timeout", 30)
    assert spec["terminationGracePeriodSeconds"] > drain
    uid = next(rest for w, rest in dockerfile_instructions() if w == "USER").split(":")[0]
    for context in (spec["securityContext"], container["securityContext"]):
        assert context["runAsNonRoot"] is True
        assert context.get("runAsUser", int(uid)) == int(uid)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e for e in container["env"]}
    assert port_of(env["PGLOUPE_LISTEN"]["value"]) == PROXY_PORT and port_of(env["PGLOUPE_HTTP"]["value"]) == HTTP_PORT
    assert "secretKeyRef" in env["PGLOUPE_UPSTREAM"]["valueFrom"]
    # the config file it reads is the ConfigMap's, mounted where --config points
    config_path = container["args"][container["args"].index("--config") + 1]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mount = next(m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
    configmap = k8s("configmap.yaml")
    assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert config_path.rsplit("/", 1)[1] in configmap["data"]
    # the root file system is read-only: the findings store needs a writable volume where the image puts it
    state = next(m for m in container["volumeMounts"] if m["mountPath"] == dockerfile_env()["PGLOUPE_STATE_DIR"])
    assert not state.get("readOnly") and "emptyDir" in volumes[state["name"]]


def test_k8s_service_and_servicemonitor():
    deployment, service, monitor = k8s("deployment.yaml"), k8s("service.yaml"), k8s("servicemonitor.yaml")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["kind"] == "Service"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert {p["port"] for p in ports.values()} == {PROXY_PORT, HTTP_PORT}
    for p in ports.values():
        target = p.get("targetPort", p["port"])
        assert container_ports.get(target, target) == p["port"], p
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert ports[endpoint["port"]]["port"] == HTTP_PORT
    assert endpoint.get("path", "/metrics") == "/metrics"
    # Prometheus is handed the Secret the pod reads its http_token from
    env = {e["name"]: e for e in container["env"]}
    token_ref = env["PGLOUPE_HTTP_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert endpoint["authorization"]["type"] == "Bearer"
    assert endpoint["authorization"]["credentials"] == {"name": token_ref["name"], "key": token_ref["key"]}


# ------------------------------------------------------------------ Grafana


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict) -> list[dict]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return out


def test_dashboard_panels_have_queries():
    board = dashboard()
    assert board["uid"] and board["title"] and 36 <= board["schemaVersion"] <= 41
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        targets = panel.get("targets") or []
        assert any(t.get("expr", "").strip() for t in targets), f"panel {panel['title']!r} has no query"
        for t in targets:
            datasource = t.get("datasource") or panel.get("datasource")
            assert datasource == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
            # every range window is Grafana's $__rate_interval
            for window in re.findall(r"\[([^\]]*)\]", t["expr"]):
                assert window == "$__rate_interval", f"{panel['title']}: [{window}]"


def dashboard_exprs() -> str:
    return "\n".join(t["expr"] for p in panels(dashboard()) for t in p.get("targets", []))


def test_dashboard_shows_the_metrics():
    exprs = dashboard_exprs()
    for metric in ("pgloupe_statement_duration_seconds_count", "pgloupe_statement_duration_seconds_bucket",
                   "pgloupe_findings", "pgloupe_advice", "pgloupe_client_connections",
                   "pgloupe_upstream_connections", "pgloupe_db_connections", "pgloupe_db_max_connections",
                   "pgloupe_db_index_hit_ratio", "pgloupe_db_seq_scan_ratio", "pgloupe_db_dead_tuple_ratio",
                   "pgloupe_db_connection_ratio", "pgloupe_events_queue_depth", "pgloupe_events_dropped_total"):
        assert metric in exprs, metric
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in exprs
    assert 'fingerprint!="other"' in exprs
    assert re.search(r'kind=~"n_plus_one_', exprs) and 'kind="slow_query"' in exprs


# metric -> the documents' thresholds drawn on its panel
HEALTH_THRESHOLDS = {
    "pgloupe_db_index_hit_ratio": {0.95, 0.99},
    "pgloupe_db_seq_scan_ratio": {0.01, 0.05},
    "pgloupe_db_dead_tuple_ratio": {0.05, 0.10},
    "pgloupe_db_connection_ratio": {0.80, 0.90},
}


def test_health_panels_draw_the_thresholds_as_lines():
    for metric, values in HEALTH_THRESHOLDS.items():
        (panel,) = [p for p in panels(dashboard()) if any(metric in t["expr"] for t in p.get("targets", []))]
        defaults = panel["fieldConfig"]["defaults"]
        steps = {s["value"] for s in defaults["thresholds"]["steps"] if s["value"] is not None}
        assert steps == values, f"{panel['title']}: thresholds {steps}"
        assert defaults["custom"]["thresholdsStyle"]["mode"] in ("line", "dashed", "line+area", "dashed+area")
        assert defaults["unit"] == "percentunit"


def test_grafana_provisioning_points_at_the_dashboard():
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    (prometheus,) = [d for d in datasources if d["uid"] == "prometheus"]
    assert prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"  # the compose service
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "pgloupe.yml")["providers"]
    (provider,) = providers
    assert provider["type"] == "file" and provider["options"]["path"] == GRAFANA_DASHBOARDS_PATH
    # compose mounts grafana/dashboards there, and the dashboard is in it
    mounted = Path(volume_map(compose()["services"]["grafana"])[GRAFANA_DASHBOARDS_PATH])
    assert (mounted / DASHBOARD.name).resolve() == DASHBOARD.resolve()
