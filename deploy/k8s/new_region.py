"""Write the Kubernetes overlay of a region from its entry in the region catalogue.

    python deploy/k8s/new_region.py KR                       # entry from shared/regions.yaml
    python deploy/k8s/new_region.py KR --catalogue other.yaml

Writes deploy/k8s/overlays/<code>/ (kustomization.yaml, namespace.yaml, region.yaml and an empty
strategies/<code>.yaml) and refuses to overwrite an existing overlay. The files are a starting point to review
and commit: set the region's Kafka brokers, replicas and strategies there. tests/unit/test_k8s_overlays.py
fails while a catalogue region has no overlay or an overlay's region.yaml differs from the catalogue.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.regions import Region, RegionConfigError, UnknownRegion, load_catalogue  # noqa: E402

OVERLAYS = Path(__file__).resolve().parent / "overlays"
DEFAULT_CATALOGUE = ROOT / "shared" / "regions.yaml"


def overlay_files(r: Region) -> dict[str, str]:
    """The overlay's files by path relative to its folder."""
    lc = r.code.lower()
    return {
        "kustomization.yaml": f"""\
# The {r.name} region stack ({r.code}, {r.currency}, {r.timezone}): its own namespace, Kafka, database,
# region catalogue and strategies. deploy/RUNBOOK.md has the rollout; in short:
#   kubectl create namespace comp-{lc}
#   kubectl -n comp-{lc} create secret generic comp-secrets \\
#     --from-literal=DATABASE_URL='postgresql+asyncpg://comp:<password>@pg-{lc}.internal:5432/comp' \\
#     --from-literal=AUTH_TOKEN_SECRET="$(openssl rand -base64 32)"
#   kubectl apply -k deploy/k8s/overlays/{lc}
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization

namespace: comp-{lc}

resources:
  - namespace.yaml
  - ../../base

components:
  - ../../components/region

labels:
  - pairs:
      comp.example.com/region: {lc}
    includeSelectors: false

images:
  - name: compensation-platform
    newName: registry.example.com/compensation-platform
    newTag: "0.1.0"

configMapGenerator:
  - name: comp-config
    behavior: merge
    literals:
      - KAFKA_BOOTSTRAP_SERVERS=kafka-{lc}-0.kafka-{lc}:9092,kafka-{lc}-1.kafka-{lc}:9092,kafka-{lc}-2.kafka-{lc}:9092
      - LEDGER_BUDGET_PERIOD=month
  - name: comp-region
    files:
      - regions.yaml=region.yaml
  - name: auto-comp-strategies
    files:
      - strategies/{lc}.yaml
""",
        "namespace.yaml": f"""\
apiVersion: v1
kind: Namespace
metadata:
  name: comp-{lc}
  labels:
    comp.example.com/region: {lc}
""",
        "region.yaml": f"""\
# The {r.name} stack's region catalogue (REGIONS_FILE): this region only, exactly as in
# shared/regions.yaml (tests/unit/test_k8s_overlays.py compares them). The stack refuses every other region.
regions:
  - {{code: {r.code}, name: {r.name}, currency: {r.currency}, exponent: {r.exponent}, timezone: {r.timezone}}}
""",
        f"strategies/{lc}.yaml": f"""\
# The strategies the {r.code} stack runs (AUTO_COMP_STRATEGIES_DIR). None yet: every {r.code} ticket is
# decided not_eligible (no strategy matches) and nothing is issued automatically until the region's
# strategy managers add theirs here ({r.currency}, regions: [{r.code}]; format in docs/strategies.md).
# Check them from the repository root with
#   REGIONS_FILE=deploy/k8s/overlays/{lc}/region.yaml \\
#     python -m services.auto_comp validate-strategies deploy/k8s/overlays/{lc}/strategies
strategies: []
""",
    }


def write_overlay(region: Region, overlays: Path = OVERLAYS) -> Path:
    target = overlays / region.code.lower()
    if target.exists():
        raise FileExistsError(f"{target} exists; edit it instead")
    for relative, text in overlay_files(region).items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deploy/k8s/new_region.py", description=__doc__.split("\n")[0])
    parser.add_argument("code", help="region code, as in the catalogue (e.g. KR)")
    parser.add_argument("--catalogue", type=Path, default=DEFAULT_CATALOGUE)
    args = parser.parse_args(argv)
    try:
        region = load_catalogue(args.catalogue).get(args.code.strip().upper())
        target = write_overlay(region)
    except (RegionConfigError, UnknownRegion, FileExistsError) as exc:
        print(f"new_region: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}; review it, then "
          f"`make test` renders and validates it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
