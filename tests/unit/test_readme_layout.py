"""The README's layout tables tell the truth: every module of every service is named in its service's table,
and every module a table names exists (issue 16: a newcomer finds any behaviour in one hop)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("intake", "auto_comp", "audit_sampler", "ledger", "insights")
TICKED = re.compile(r"`([^`]+)`")


def _tables() -> dict[str, list[tuple[list[str], list[str]]]]:
    section = ROOT.joinpath("README.md").read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    tables: dict[str, list[tuple[list[str], list[str]]]] = {}
    current = None
    for line in section.splitlines():
        heading = re.match(r"### services/(\w+)/$", line)
        if heading:
            current = tables.setdefault(heading.group(1), [])
        elif current is not None and line.startswith("| `"):
            first, second = line.strip("|").split(" | ", 1)
            current.append((TICKED.findall(first), TICKED.findall(second)))
    return tables


def _own_parts(service: str) -> set[str]:
    folder = ROOT / "services" / service
    parts = {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}
    parts |= {f"{p.name}/" for p in folder.iterdir() if p.is_dir() and p.name not in {"__pycache__", "migrations"}}
    return parts


def test_every_service_has_a_table() -> None:
    assert set(_tables()) == set(SERVICES)


def test_every_module_is_named_and_every_named_module_exists() -> None:
    tables = _tables()
    for service in SERVICES:
        named = {name for names, _ in tables[service] for name in names}
        parts = _own_parts(service) - {"migrations/"}
        assert parts - named == set(), f"services/{service}: not in the README's layout table"
        assert named - parts == set(), f"services/{service}: named in the README but missing"


def test_subpackage_rows_name_every_module_they_hold() -> None:
    for service, rows in _tables().items():
        for names, described in rows:
            for folder in (n for n in names if n.endswith("/")):
                path = ROOT / "services" / service / folder
                modules = {p.name for p in path.glob("*.py") if p.name != "__init__.py"}
                if not modules:
                    continue  # a data folder (strategies, policies, market references)
                mentioned = {d for d in described if d.endswith(".py")}
                assert modules - mentioned == set(), f"services/{service}/{folder}: modules not described"
                assert mentioned - modules == set(), f"services/{service}/{folder}: described but missing"
