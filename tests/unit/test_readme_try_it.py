"""The README's "Try it" walk-through works on any day: it derives the budget period from the clock in the
region's time zone instead of naming a month that will have passed (then the voucher is denied
`no_budget` and every later step shows nothing)."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

README = Path(__file__).resolve().parents[2] / "README.md"


def try_it() -> str:
    text = README.read_text()
    section = text.split("## Try it", 1)[1].split("\n## ", 1)[0]
    return section.split("```sh", 1)[1].split("```", 1)[0]


def test_periods_in_the_walk_through_come_from_the_clock() -> None:
    script = try_it()
    literal_periods = re.findall(r"(?:budgets/[A-Z]{2}/|period=|from=|to=)(\d{4}-\d{2})", script)
    assert literal_periods == [], f"fixed periods in README 'Try it': {literal_periods}"
    assert "/v1/budgets/SG/$P" in script and "period=$P" in script


def test_the_period_lines_give_this_month_in_singapore_and_the_next_ones_start() -> None:
    lines = [line for line in try_it().splitlines() if line.startswith(("P=", "NEXT="))]
    assert len(lines) == 2
    script = "\n".join(lines).replace(".venv/bin/python", sys.executable) + '\necho "$P $NEXT"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split()
    now = datetime.now(ZoneInfo("Asia/Singapore"))
    assert out[0] == now.strftime("%Y-%m")
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    assert out[1] == f"{year}-{month:02d}-01"


def test_no_macos_only_commands() -> None:
    assert not re.search(r"^\s*open http", try_it(), flags=re.M)
