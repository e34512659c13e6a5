"""Workbench form fields -> the inputs of the audit operations. No I/O.

Forms only translate (major-unit amounts, yes/no answers, local times); every rule about what is valid
stays in ``services.audit_sampler.operations`` and the event contracts, which the pages call. Error fields
use the JSON API's paths (``compensation.amount``, ``expected.warranted``), so one error list serves both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.audit_sampler.domain.verdicts import ATTRIBUTES
from services.audit_sampler.operations.gold import GoldItemInput
from shared.money import Money
from shared.regions import Region

AMOUNT = re.compile(r"^\d{1,15}(\.\d{1,4})?$")
MAX_MINOR = 10**15  # far above any compensation, far below PostgreSQL's bigint
GOLD_ROWS = 3  # liability and evidence rows offered on the gold form
GOLD_TEXT_FIELDS = ("compensation_id", "ticket_id", "order_id", "buyer_id", "seller_id", "carrier_id", "agent_id",
                    "team", "kind", "reason_code", "voucher_code", "note")

Errors = list[dict[str, str]]


def form_text(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def parse_amount(raw: str, currency: str, field: str, errors: Errors) -> int | None:
    """A major-unit amount ("12.50") -> exact minor units, or None with an error appended."""
    # Plain digits with an optional decimal part: no exponents, signs or grouping to misread.
    if not AMOUNT.match(raw):
        errors.append({"field": field, "message": f"not an amount in {currency}: write it like 12.50"})
        return None
    try:
        minor = Money.from_major(raw, currency).minor
    except (ValueError, ArithmeticError) as exc:
        errors.append({"field": field, "message": f"not an amount in {currency}: {exc}"})
        return None
    if minor > MAX_MINOR:
        errors.append({"field": field, "message": "implausibly large"})
        return None
    return minor


@dataclass(frozen=True)
class GoldForm:
    gold: GoldItemInput
    errors: Errors  # what could not even be read (amounts, times); the item must not be seeded then
    share_rows: tuple[int, ...]  # form row of each liability share (empty rows are skipped)
    evidence_rows: tuple[int, ...]

    def on_rows(self, errors: Errors) -> Errors:
        """Errors with list positions (``compensation.liability.1...``) turned into the form's rows, so
        each message lands next to the row the lead filled in."""
        out = []
        for e in errors:
            parts = e["field"].split(".")
            if len(parts) > 2 and parts[0] == "compensation" and parts[2].isdigit():
                rows = {"liability": self.share_rows, "evidence": self.evidence_rows}.get(parts[1], ())
                if int(parts[2]) < len(rows):
                    parts[2] = str(rows[int(parts[2])])
            out.append({**e, "field": ".".join(parts)})
        return out


def gold_from_form(form: Mapping[str, Any], region: Region) -> GoldForm:
    """The gold item the form describes. Fields left empty are left out, so the contract names what is
    missing; an unreadable value is left out too and reported in ``errors``."""
    errors: Errors = []
    currency = region.currency
    comp: dict[str, Any] = {}
    for name in GOLD_TEXT_FIELDS:
        if value := form_text(form, name):
            comp[name] = value
    if raw := form_text(form, "amount"):
        if (minor := parse_amount(raw, currency, "compensation.amount", errors)) is not None:
            comp["amount"] = {"amount_minor": minor, "currency": currency}
    if raw := form_text(form, "order_amount"):
        if (minor := parse_amount(raw, currency, "compensation.order_amount", errors)) is not None:
            comp["order_amount"] = {"amount_minor": minor, "currency": currency}
    if raw := form_text(form, "valid_until"):
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            errors.append({"field": "compensation.valid_until", "message": "not a date and time"})
        else:
            # A time typed without an offset is the region's local time, as leads read vouchers.
            comp["valid_until"] = (moment if moment.tzinfo else moment.replace(tzinfo=region.tz)).isoformat()
    shares: list[dict[str, Any]] = []
    share_rows: list[int] = []
    for i in range(GOLD_ROWS):
        party_type, party_id, raw = (form_text(form, f"share_{i}_{k}") for k in ("type", "id", "amount"))
        if not (party_type or party_id or raw):
            continue
        party = {k: v for k, v in (("type", party_type), ("id", party_id)) if v}
        share: dict[str, Any] = {"party": party}
        field = f"compensation.liability.{len(shares)}.amount_minor"
        if raw and (minor := parse_amount(raw, currency, field, errors)) is not None:
            share["amount_minor"] = minor
        shares.append(share)
        share_rows.append(i)
    comp["liability"] = shares
    evidence: list[dict[str, str]] = []
    evidence_rows: list[int] = []
    for i in range(GOLD_ROWS):
        kind, uri = form_text(form, f"evidence_{i}_kind"), form_text(form, f"evidence_{i}_uri")
        if kind or uri:
            evidence.append({k: v for k, v in (("kind", kind), ("uri", uri)) if v})
            evidence_rows.append(i)
    comp["evidence"] = evidence
    expected: dict[str, bool] = {}
    for name in ATTRIBUTES:
        answer = form_text(form, f"expect_{name}")
        if answer in ("yes", "no"):
            expected[name] = answer == "yes"  # an unanswered one is reported by the workflow's own check
    gold = GoldItemInput(region=region.code, compensation=comp, expected=expected,
                         queue=form_text(form, "queue") or None)
    return GoldForm(gold, errors, tuple(share_rows), tuple(evidence_rows))


def without_covered(errors: Errors, covered: Errors) -> Errors:
    """``errors`` minus those about a field already reported in ``covered`` (or inside one)."""
    fields = {e["field"] for e in covered}
    return [e for e in errors if not any(e["field"] == f or e["field"].startswith(f + ".") for f in fields)]
