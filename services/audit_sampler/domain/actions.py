"""Corrective actions (issue 14): what a lead opens from an audit finding, a failed-verdict pattern, a root
cause or a spike, against an agent, a team, a seller, a carrier or a guideline (a reason code's rules), and
how its effect is judged: the target's audited error rate in a window before the action against the same
length of window after it, with Newcombe's interval of the difference (``shared.stats``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from shared import stats

SOURCES = ("finding", "pattern", "root_cause", "spike")
TARGET_TYPES = ("agent", "team", "seller", "carrier", "guideline")
KINDS = ("coaching", "retraining", "guideline_change", "seller_warning", "carrier_claim", "process_change",
         "other")
STATUSES = ("open", "in_progress", "done", "cancelled")
# Where a status may go next; done and cancelled are final (a new action is opened instead).
TRANSITIONS: dict[str, frozenset[str]] = {
    "open": frozenset({"in_progress", "done", "cancelled"}),
    "in_progress": frozenset({"open", "done", "cancelled"}),
    "done": frozenset(),
    "cancelled": frozenset(),
}
_ID = re.compile(r"^[A-Za-z0-9._:@\-]{1,128}$")
_LABEL = re.compile(r"^[^\x00-\x1f]{1,128}$")
MAX_NOTE = 2000


@dataclass(frozen=True)
class ActionInput:
    region: str
    source: str
    source_ref: str | None
    target_type: str
    target_id: str
    kind: str
    owner: str
    due_on: date | None
    window_days: int
    note: str | None


def action_errors(action: ActionInput, today: date) -> list[dict[str, str]]:
    """Every problem of a new action, each naming its field; empty when it may be opened."""
    errors: list[dict[str, str]] = []

    def fail(field: str, message: str) -> None:
        errors.append({"field": field, "message": message})

    if action.source not in SOURCES:
        fail("source", f"one of {', '.join(SOURCES)}")
    if action.source_ref is not None and not _LABEL.match(action.source_ref):
        fail("source_ref", "one line of at most 128 characters")
    if action.target_type not in TARGET_TYPES:
        fail("target_type", f"one of {', '.join(TARGET_TYPES)}")
    if not _ID.match(action.target_id):
        fail("target_id", "required: the agent, team, seller or carrier id, or the reason code of a guideline")
    if action.kind not in KINDS:
        fail("kind", f"one of {', '.join(KINDS)}")
    if not _ID.match(action.owner):
        fail("owner", "required: who carries the action out")
    if action.due_on is None:
        fail("due_on", "required: a date (YYYY-MM-DD)")
    elif action.due_on < today:
        fail("due_on", f"must not be before today ({today.isoformat()})")
    elif action.due_on > today + timedelta(days=366):
        fail("due_on", "at most a year ahead")
    if not 1 <= action.window_days <= 366:
        fail("window_days", "between 1 and 366 days")
    if action.note is not None and (len(action.note) > MAX_NOTE or "\x00" in action.note):
        fail("note", f"at most {MAX_NOTE} characters")
    return errors


def transition_error(current: str, new: str) -> str | None:
    if new not in STATUSES:
        return f"one of {', '.join(STATUSES)}"
    if new != current and new not in TRANSITIONS[current]:
        return f"a {current} action cannot become {new}"
    return None


@dataclass(frozen=True)
class Windows:
    before_start: datetime
    before_end: datetime  # the action's start: opened
    after_start: datetime  # done, else opened: the change applies from here
    after_end: datetime
    complete: bool  # the after window has ended


def windows(*, opened_at: datetime, done_at: datetime | None, window_days: int, now: datetime) -> Windows:
    span = timedelta(days=window_days)
    after_start = done_at or opened_at
    after_end = after_start + span
    return Windows(opened_at - span, opened_at, after_start, min(after_end, now), now >= after_end)


@dataclass(frozen=True)
class Effect:
    window_days: int
    before_audits: int
    before_errors: int
    after_audits: int
    after_errors: int
    difference: float | None  # after rate - before rate
    low: float | None
    high: float | None
    complete: bool

    @property
    def before_rate(self) -> float | None:
        return None if self.before_audits == 0 else self.before_errors / self.before_audits

    @property
    def after_rate(self) -> float | None:
        return None if self.after_audits == 0 else self.after_errors / self.after_audits

    @property
    def reading(self) -> str:
        if self.difference is None or self.low is None or self.high is None:
            return "not measurable yet: a window has no audits"
        so_far = "" if self.complete else " (after window still running)"
        if self.high < 0:
            return f"error rate fell: the whole 95% interval is below zero{so_far}"
        if self.low > 0:
            return f"error rate rose: the whole 95% interval is above zero{so_far}"
        return f"no clear change: the 95% interval includes zero{so_far}"


def effect(*, before_errors: int, before_audits: int, after_errors: int, after_audits: int, window_days: int,
           complete: bool) -> Effect:
    """The target's error rate after vs before, with Newcombe's hybrid score interval of the difference."""
    if before_audits == 0 or after_audits == 0:
        return Effect(window_days, before_audits, before_errors, after_audits, after_errors, None, None, None,
                      complete)
    interval = stats.newcombe_interval(after_errors, after_audits, before_errors, before_audits)
    difference = after_errors / after_audits - before_errors / before_audits
    return Effect(window_days, before_audits, before_errors, after_audits, after_errors, difference,
                  interval.low, interval.high, complete)
