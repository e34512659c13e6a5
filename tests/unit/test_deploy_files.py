"""Deployment files stay valid: Prometheus rules and config (promtool), docker-compose, the local Procfile, the
runbook. The Kubernetes manifests are rendered and validated in test_k8s_overlays.py."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

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
                   "audit_queue_oldest_age_seconds", "audit_queue_sla_seconds", "ledger_voucher_early_expiries_total",
                   "up ==", "insights_last_compaction_timestamp_seconds", "insights_report_seconds_bucket"):
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


PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt package prometheus)")
def test_prometheus_config_passes_promtool_check_with_the_rules_beside_it():
    result = run("promtool", "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alerts.yml" in result.stdout + result.stderr


def test_docker_compose_runs_prometheus_with_the_alert_rules_loaded():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    prometheus = compose["services"]["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:v")
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in prometheus["command"] if "=" in arg)
    config_path = Path(flags["config.file"])
    mounts = {}
    for volume in prometheus["volumes"]:
        source, target, *mode = volume.split(":")
        assert mode == ["ro"], volume
        mounts[target] = (ROOT / source).resolve()
    assert mounts[str(config_path)] == PROMETHEUS_CONFIG
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    # rule_files are relative to the config file, in the container as in the repository.
    for rule_file in config["rule_files"]:
        assert mounts[str(config_path.parent / rule_file)] == PROMETHEUS_CONFIG.parent / rule_file
    assert ALERTS.name in config["rule_files"]
    assert any(p.startswith("127.0.0.1:9090:") for p in prometheus["ports"])


def test_prometheus_scrapes_every_service_of_the_compose_stack_and_insights():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
            for job in config["scrape_configs"]}
    for module, port in PORTS.items():
        assert jobs[module] == [f"{module}:{port}"], module
    # A service added to docker-compose later is scraped too: a job named after it, targeting its compose name.
    for name, svc in compose["services"].items():
        command = svc.get("command")
        if isinstance(command, list) and command[:2] == ["python", "-m"] and command[-1] == "serve":
            assert command[2] == f"services.{name}"
            (target,) = jobs[name]
            assert target.startswith(f"{name}:"), target
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"])


# ---- the runbook ----------------------------------------------------------------------------------------

RUNBOOK = ROOT / "deploy" / "RUNBOOK.md"
CLI_MODULES = {"shared": "shared.__main__", "shared.embedded": "shared.embedded"}
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "2>&1"}


def runbook_sections() -> dict[str, list[str]]:
    """Level-3 headings by the level-2 section they are in."""
    sections: dict[str, list[str]] = {}
    current = ""
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = []
        elif line.startswith("### "):
            sections.setdefault(current, []).append(line[4:].strip())
    return sections


def test_every_alert_has_a_runbook_section_and_every_section_an_alert():
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    documented = runbook_sections()["Alerts"]
    assert sorted(set(alerts)) == sorted(documented), "deploy/RUNBOOK.md ## Alerts needs one ### per alert"


def runbook_commands() -> list[str]:
    """Every command in the runbook's code blocks and inline code, continuation lines joined."""
    text = RUNBOOK.read_text()
    blocks = re.findall(r"```(?:sh)?\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S))
    lines = [ln.strip() for block in blocks for ln in block.replace("\\\n", " ").splitlines()] + inline
    return [ln for ln in lines if ln and not ln.startswith("#")]


class _Parsed(Exception):
    """Raised once the arguments parsed: the command itself never runs."""


def parses(module: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the module's own argument parser on argv, stopping before the command does anything."""
    if module == "shared.contracts":  # two words, no argparse (shared/contracts/export.py main)
        if argv[:1] not in (["export"], ["check"]) or len(argv) > 2:
            raise SystemExit(2)
        return
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    main = importlib.import_module(CLI_MODULES.get(module, f"{module}.__main__")).main
    with pytest.raises(_Parsed):
        main(argv)
    monkeypatch.undo()


def test_every_python_command_in_the_runbook_parses_with_the_cli_it_names(monkeypatch, capsys):
    checked = 0
    for line in runbook_commands():
        if "python -m " not in line:
            continue
        tokens = shlex.split(line[line.index("python -m "):])
        for i, token in enumerate(tokens):
            if token in SHELL_OPERATORS:
                tokens = tokens[:i]
                break
        module, argv = tokens[2], tokens[3:]
        if module == "...":  # the intro's "python -m ..." stands for any command
            continue
        try:
            parses(module, argv, monkeypatch)
        except SystemExit:
            pytest.fail(f"deploy/RUNBOOK.md: `{' '.join(tokens)}` does not parse: {capsys.readouterr().err}")
        checked += 1
    assert checked >= 20  # the runbook's commands were found at all


def test_runbook_scripts_make_targets_and_links_exist():
    text = RUNBOOK.read_text()
    commands = runbook_commands()
    for line in commands:
        for script in re.findall(r"python ((?:deploy|bench)/\S+\.py)", line):
            assert (ROOT / script).is_file(), script
        for target in re.findall(r"\bmake (\w[\w-]*)", line):
            assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(), flags=re.M), target
    # In-page links point at headings (GitHub's anchors: lower case, punctuation dropped, spaces -> '-').
    anchors = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#{2,3} (.+)$", text, flags=re.M)}
    for link in re.findall(r"\]\(#([^)]+)\)", text):
        assert link in anchors, link
    for path in re.findall(r"`((?:deploy|docs|services|shared)/[\w./-]+\.(?:ya?ml|md|py))`", text):
        if "/kr" not in path:  # the region being added in the example
            assert (ROOT / path).exists(), path
