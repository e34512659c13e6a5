"""`make test` must not pass a run that tested nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_pytest_fails_when_nothing_is_collected():
    done = subprocess.run(["make", "--no-print-directory", "pytest",
                           "PYTEST_ARGS=-k a_name_no_test_has tests/unit/test_make_pytest.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "no tests collected" in done.stderr
