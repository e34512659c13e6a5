"""Deployment files stay valid: Prometheus rules and config (promtool), docker-compose, the local Procfile, the
runbook. The Kubernetes manifests are rendered and validated in test_k8s_overlays.py."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("intake", "auto_comp", "audit_sampler", "ledger", "insights")
PORTS = {"intake": 8001, "auto_comp": 8002, "audit_sampler": 8003, "ledger": 8004, "insights": 8005}
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
GRAFANA = ROOT / "deploy" / "grafana"


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
                   "up ==", "insights_last_compaction_timestamp_seconds", "insights_report_seconds_bucket",
                   "insights_budget_projected_exhaustion_timestamp_seconds",
                   "insights_budget_period_end_timestamp_seconds"):
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


# --- Grafana dashboards and the compose Prometheus --------------------------------------------------------

_DEFINITION = re.compile(r'\b(Counter|Gauge|Histogram|Summary)\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"')
_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}


def defined_metrics() -> dict[str, set[str]]:
    """Metric family -> the series names Prometheus sees, from every prometheus_client definition in code."""
    families: dict[str, set[str]] = {}
    for path in sorted([*(ROOT / "shared").rglob("*.py"), *(ROOT / "services").rglob("*.py")]):
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


def test_dashboards_cover_every_metric_of_the_five_services_and_the_toolkit():
    used = {m for board in dashboards().values() for _, expr in panel_exprs(board) for m in promql_metrics(expr)}
    missing = sorted(family for family, names in defined_metrics().items() if not names & used)
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
    assert grafana["depends_on"]["prometheus"] == {"condition": "service_healthy"}


