"""Deployment files stay valid: Prometheus rules (promtool), docker-compose, kustomize, the local Procfile."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("intake", "auto_comp", "audit_sampler", "ledger", "insights")
PORTS = {"intake": 8001, "auto_comp": 8002, "audit_sampler": 8003, "ledger": 8004, "insights": 8005}
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"


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
                   "audit_queue_oldest_age_seconds", "audit_queue_sla_seconds", "up ==",
                   "insights_last_compaction_timestamp_seconds", "insights_report_seconds_bucket"):
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
    assert set(deployments) == {"intake", "auto-comp", "audit-sampler", "ledger", "insights"} == services
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
