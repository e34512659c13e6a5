"""Deployment files stay valid: Prometheus rules (promtool), docker-compose, kustomize, the local Procfile."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("intake", "auto_comp", "audit_sampler", "ledger")
PORTS = {"intake": 8001, "auto_comp": 8002, "audit_sampler": 8003, "ledger": 8004}
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
GRAFANA = ROOT / "deploy" / "grafana"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALL_SERVICES = (*SERVICES, "insights")
ALL_PORTS = {**PORTS, "insights": 8005}
# The insights service is built in parallel with its dashboard; until services/insights/metrics.py exists the
# dashboards may name these (and only these) metrics of it. Once it exists they must be defined there.
INSIGHTS_METRICS = {"insights_events_consumed_total", "insights_rollup_lag_seconds", "insights_report_seconds_bucket"}


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt package prometheus)")
def test_alert_rules_pass_promtool_check():
    result = run("promtool", "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt package prometheus)")
def test_alert_rules_fire_as_specified_by_their_unit_tests():
    result = run("promtool", "test", "rules", str(ALERTS.with_name("alerts_test.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_cover_the_platform_metrics():
    rules = yaml.safe_load(ALERTS.read_text())
    exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    for metric in ("comp_consumer_lag", "comp_consumer_records_dead_lettered_total", "comp_outbox_oldest_age_seconds",
                   "comp_outbox_backlog", "ledger_budget_used_ratio", "ledger_budget_exceeded_total",
                   "ledger_invariant_violations", "auto_comp_strategy_reload_failed",
                   "audit_queue_oldest_age_seconds", "audit_queue_sla_seconds", "up =="):
        assert metric in exprs, metric
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


def test_docker_compose_names_the_four_services_with_health_and_migrations():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "kafka", "topics", *SERVICES} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["postgres"]["image"] == "postgres:16"
    for name in SERVICES:
        svc = services[name]
        assert svc["command"] == ["python", "-m", f"services.{name}", "serve"]
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert f":{PORTS[name]}/healthz" in " ".join(svc["healthcheck"]["test"])
        assert svc["depends_on"][f"{name}-migrate"]["condition"] == "service_completed_successfully"
        assert services[f"{name}-migrate"]["command"] == ["python", "-m", f"services.{name}", "migrate"]
        env = svc["environment"]
        for var in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "AUTH_TOKEN_SECRET", "LOG_LEVEL"):
            assert env.get(var), var
        assert env["DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["HOST"] == "0.0.0.0"
    assert (ROOT / "deploy" / "Dockerfile").read_text().startswith("#")


def test_local_procfile_runs_the_four_services_without_honchos_port():
    lines = [ln for ln in (ROOT / "deploy" / "local" / "Procfile").read_text().splitlines()
             if ln and not ln.startswith("#")]
    procs = dict(ln.split(":", 1) for ln in lines)
    assert set(procs) == set(SERVICES)
    for name, cmd in procs.items():
        assert "unset PORT" in cmd and f"-m services.{name} serve" in cmd


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_overlay_renders_probes_secrets_and_scrape_annotations():
    result = run("kubectl", "kustomize", "deploy/k8s/overlays/sg")
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert set(deployments) == {"intake", "auto-comp", "audit-sampler", "ledger"} == services
    for name, dep in deployments.items():
        assert dep["metadata"]["namespace"] == "comp-sg"
        pod = dep["spec"]["template"]
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert pod["spec"]["enableServiceLinks"] is False
        (container,) = pod["spec"]["containers"]
        assert container["image"].startswith("registry.example.com/compensation-platform:")
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["resources"]["requests"]["cpu"]
        refs = container["envFrom"]
        assert {"secretRef": {"name": "comp-secrets"}} in refs
        assert any(r.get("configMapRef", {}).get("name", "").startswith("comp-config") for r in refs)
        module = name.replace("-", "_")
        assert container["command"] == ["python", "-m", f"services.{module}", "serve"]
        assert [c["name"] for c in pod["spec"]["initContainers"]] == ["topics", "migrate"]
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(PORTS[module])
    assert deployments["intake"]["spec"]["replicas"] == 3


# --- Grafana dashboards and the compose Prometheus --------------------------------------------------------

_DEFINITION = re.compile(r'\b(Counter|Gauge|Histogram|Summary)\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"')
_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}


def defined_metrics(*, skip: str | None = None) -> dict[str, set[str]]:
    """Metric family -> the series names Prometheus sees, from every prometheus_client definition in code."""
    families: dict[str, set[str]] = {}
    for path in sorted([*(ROOT / "shared").rglob("*.py"), *(ROOT / "services").rglob("*.py")]):
        if skip and skip in path.as_posix():
            continue
        for kind, name in _DEFINITION.findall(path.read_text()):
            if kind == "Counter":
                base = name.removesuffix("_total")
                families[base] = {f"{base}_total"}
            elif kind == "Histogram":
                families[name] = {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "Summary":
                families[name] = {name, f"{name}_sum", f"{name}_count"}
            else:
                families[name] = {name}
    return families


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, aggregations, label names and keywords out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        if text[match.end():].lstrip().startswith("(") or match.group(0).lower() in _PROMQL_WORDS:
            continue
        names.add(match.group(0))
    return names


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted((GRAFANA / "dashboards").glob("*.json"))}


def panel_exprs(dashboard: dict) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_promql_parser_finds_metrics_not_functions_or_labels():
    expr = ('histogram_quantile(0.99, sum by (service, le) (rate(comp_http_request_duration_seconds_bucket'
            '{service="intake", route=~"/v1/.*"}[$__rate_interval]))) / on (service) group_left max(up) > bool 0')
    assert promql_metrics(expr) == {"comp_http_request_duration_seconds_bucket", "up"}
    assert promql_metrics("time() - max(ledger_invariant_last_run_timestamp_seconds)") == {
        "ledger_invariant_last_run_timestamp_seconds"}


def test_every_dashboard_query_names_a_metric_the_code_defines():
    known = set().union(*defined_metrics().values()) | {"up"}
    if not (ROOT / "services" / "insights" / "metrics.py").exists():
        known |= INSIGHTS_METRICS
    boards = dashboards()
    assert boards, "no dashboards"
    for name, board in boards.items():
        exprs = panel_exprs(board)
        assert exprs, name
        for title, expr in exprs:
            assert promql_metrics(expr), (name, title, expr)
            unknown = promql_metrics(expr) - known
            assert not unknown, f"{name} / {title}: {sorted(unknown)} not defined in shared/ or services/"
        variables = board["templating"]["list"]
        for var in variables:
            assert promql_metrics(var["definition"].removeprefix("label_values(").split(",")[0]) <= known, name


def test_dashboards_cover_every_metric_of_the_four_services_and_the_toolkit():
    used = {m for board in dashboards().values() for _, expr in panel_exprs(board) for m in promql_metrics(expr)}
    missing = sorted(family for family, names in defined_metrics(skip="services/insights/").items()
                     if not names & used)
    assert not missing, f"metrics no dashboard shows: {missing}"


def test_one_dashboard_per_service_plus_the_overview_all_on_the_provisioned_datasource():
    boards = dashboards()
    assert {b["uid"] for b in boards.values()} == {"comp-overview", "comp-intake", "comp-auto-comp",
                                                   "comp-audit-sampler", "comp-ledger", "comp-insights"}
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    for name, board in boards.items():
        panels = [p for p in board["panels"] if p["type"] != "row"]
        assert len({p["id"] for p in board["panels"]}) == len(board["panels"]), name
        for panel in panels:
            assert panel["datasource"]["uid"] == source["uid"], (name, panel["title"])
            assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"]), (name, panel["title"])
    overview = " ".join(expr for _, expr in panel_exprs(boards["overview.json"]))
    for metric in ("comp_http_requests_total", "comp_http_request_duration_seconds_bucket", "comp_consumer_lag",
                   "comp_outbox_backlog", "comp_consumer_records_dead_lettered_total", "ledger_budget_used_ratio",
                   "insights_events_consumed_total", "up{"):
        assert metric in overview, metric


def test_dashboards_are_the_generators_output():
    result = run(sys.executable, str(GRAFANA / "build_dashboards.py"), "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_provisions_grafana_and_prometheus_from_files_that_exist():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    grafana, prometheus = services["grafana"], services["prometheus"]
    mounts = {}
    for svc in (grafana, prometheus):
        for volume in svc["volumes"]:
            source, target, *_ = volume.split(":")
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
                mounts[target] = ROOT / source
    assert mounts["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "compensation-platform.yaml").read_text())
    (provider,) = providers["providers"]
    assert mounts[provider["options"]["path"]] == GRAFANA / "dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (mounts[str(Path(home).parent)] / Path(home).name).exists()
    assert "${GRAFANA_ADMIN_PASSWORD:?" in grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert all(port.startswith("127.0.0.1:") for svc in (grafana, prometheus) for port in svc["ports"])
    assert mounts["/etc/prometheus"] / "prometheus.yml" == PROMETHEUS_CONFIG
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert (PROMETHEUS_CONFIG.parent / config["rule_files"][0]).resolve() == ALERTS
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets == {name: [f"{name}:{ALL_PORTS[name]}"] for name in ALL_SERVICES}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt package prometheus)")
def test_prometheus_config_passes_promtool_check():
    result = run("promtool", "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
