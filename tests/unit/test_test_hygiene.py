"""Rules the suite keeps so a newcomer can trust it (issue 16 part 6): every test folder is a package (so
two helpers or tests with one file name cannot shadow each other, and helpers are imported by their full
name), and every test states what it checks."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# Calls that check something: pytest's, Playwright's expect(...) and helpers named for what they check.
CHECKS = ("raises", "fail", "warns", "expect", "approx")
CHECK_PREFIXES = ("assert", "expect", "check", "wait_for", "eventually", "one_error")


def _python_folders() -> list[Path]:
    return sorted({p.parent for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts})


def test_every_test_folder_is_a_package():
    missing = [str(d.relative_to(TESTS.parent)) for d in _python_folders() if not (d / "__init__.py").exists()]
    assert missing == [], f"add an empty __init__.py to: {missing}"


def _checks(node: ast.AST, helpers: dict[str, ast.AST], seen: frozenset[str] = frozenset()) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Assert):
            return True
        name = None
        if isinstance(n, ast.Call):
            f = n.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name and (name in CHECKS or name.startswith(CHECK_PREFIXES)):
                return True
        if isinstance(n, ast.Name) and n.id in helpers and n.id not in seen:  # called, or handed to a runner
            if _checks(helpers[n.id], helpers, seen | {n.id}):
                return True
    return False


def test_every_test_checks_something():
    silent = []
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        helpers = {f.name: f for f in functions if not f.name.startswith("test_")}
        for f in functions:
            if f.name.startswith("test_") and not _checks(f, helpers):
                silent.append(f"{path.relative_to(TESTS.parent)}:{f.lineno} {f.name}")
    assert silent == [], "tests that assert nothing (a test that cannot fail proves nothing):\n" + "\n".join(silent)
