"""HTTP API of the ledger: budgets, balances, statements, lineage, breakage. Every route is authenticated
and region-scoped; errors are RFC 9457 problem details."""


import csv
import io
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ledger import queries
from services.ledger.domain import journal
from services.ledger.domain.budget import BudgetState
from shared.auth import Authenticator, Principal
from shared.contracts.envelope import DATE_PATTERN, MONTH_PATTERN, NoNul, text_schema
from shared.http import JsonBodyRoute, Problem, csv_or_json, problems
from shared.money import MAX_BUDGET_MINOR, Money
from shared.periods import InvalidPeriod, period_bounds, validate_period
from shared.regions import Region, UnknownRegion, catalogue

BUDGET_WRITERS = ("finance", "ops_admin")
READERS = ("ops_admin", "strategy_manager", "finance", "auditor", "senior_auditor", "lead", "service")

REGION = r"^[A-Z]{2,3}$"
# Ids as the contracts spell them (shared.contracts.envelope.Identifier); accounts as the journal does.
IDENTIFIER = r"^[A-Za-z0-9._:@\-]{1,128}$"
ACCOUNT = (r"^(platform|compensation_payable|compensation_expense|(seller|carrier):[A-Za-z0-9._:@\-]{1,128}"
           r"|budget:[0-9]{4}-[0-9]{2}(-[0-9]{2})?)$")
PARTY = r"^(platform|(seller|carrier):[A-Za-z0-9._:@\-]{1,128})$"
RegionPath = Annotated[str, Path(pattern=REGION, description="Region code from the catalogue, e.g. SG.")]
RegionQuery = Annotated[str, Query(pattern=REGION, description="Region code from the catalogue, e.g. SG.")]


class BudgetLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit_minor: StrictInt = Field(
        ge=0, le=MAX_BUDGET_MINOR,
        description=f"Budget in integer minor units of the region's currency, at most {MAX_BUDGET_MINOR:,} "
                    "(ADR 0006).")
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    reason: Annotated[str, StringConstraints(min_length=3, max_length=500), NoNul,
                      text_schema(500, min_length=3)] = Field(description="Why; kept in the audit trail.")


def _region(code: str) -> Region:
    try:
        return catalogue().get(code)
    except UnknownRegion:
        raise Problem(404, "Not Found", f"unknown region {code!r}",
                      errors=[{"field": "region", "message": f"{code!r} is not in the region catalogue"}]) from None


def _period(period: str, granularity: str, region: Region, field: str = "query.period") -> tuple[datetime, datetime]:
    try:
        validate_period(period, granularity)
        return period_bounds(period, region)
    except InvalidPeriod as exc:
        raise Problem(422, "Request validation failed", str(exc),
                      errors=[{"field": field, "message": str(exc)}]) from None


def _major(minor: int, currency: str) -> str:
    return Money(minor, currency).format()


def _usage(budget: BudgetState, start: datetime, end: datetime) -> dict[str, Any]:
    limit = budget.limit
    percent = None
    if limit:
        percent = str((Decimal(budget.used) * 100 / Decimal(limit)).quantize(Decimal("0.01")))
    return {
        "region": budget.region, "period": budget.period, "currency": budget.currency,
        "period_start": start, "period_end": end,
        "limit_minor": limit, "allotted_minor": budget.allotted, "reserved_minor": budget.reserved,
        "posted_auto_minor": budget.posted_auto,
        "posted_manual_minor": budget.posted_manual, "posted_minor": budget.posted_auto + budget.posted_manual,
        "used_minor": budget.used, "remaining_minor": None if limit is None else limit - budget.used,
        "percent_used": percent, "released_minor": budget.released, "breakage_minor": budget.breakage,
        "thresholds_fired": sorted(budget.thresholds_fired),
        "limit": None if limit is None else _major(limit, budget.currency),
        "used": _major(budget.used, budget.currency),
    }


def build_router(engine: AsyncEngine, auth: Authenticator, granularity: str, park_seconds: int = 3600) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["ledger"], route_class=JsonBodyRoute)
    # Periods as this ledger cuts them (LEDGER_BUDGET_PERIOD): months, or days.
    daily = granularity == "day"
    form, example = (DATE_PATTERN, "2026-11-22") if daily else (MONTH_PATTERN, "2026-11")
    about = f"{'YYYY-MM-DD' if daily else 'YYYY-MM'} in the region's time zone, years 1970 to 2199"
    PeriodPath = Annotated[str, Path(pattern=form, description=about, examples=[example])]
    PeriodQuery = Annotated[str, Query(pattern=form, description=about, examples=[example])]

    def reader(principal: Principal, region: str) -> Region:
        principal.require_role(*READERS)
        r = _region(region)
        principal.require_region(r.code)
        return r

    @router.put("/budgets/{region}/{period}", summary="Set a region's budget for a period (audited)",
                responses=problems(404, 422, described={
                    404: "Unknown region.", 409: "The limit is below what automatic compensation already "
                                                 "reserved or posted."}))
    async def put_budget(body: BudgetLimit, region: RegionPath, period: PeriodPath,
                         principal: Principal = Depends(auth)) -> dict[str, Any]:
        principal.require_role(*BUDGET_WRITERS)
        r = _region(region)
        principal.require_region(r.code)
        start, end = _period(period, granularity, r, "path.period")
        if body.currency != r.currency:
            raise Problem(422, "Request validation failed", f"region {r.code} budgets are in {r.currency}",
                          errors=[{"field": "body.currency", "message": f"must be {r.currency}"}])
        try:
            async with engine.begin() as conn:
                budget = await queries.set_budget(conn, region=r.code, period=period, currency=r.currency,
                                                  limit=body.limit_minor, actor=principal.subject, via="api",
                                                  reason=body.reason)
        except queries.LimitBelowCommitted as exc:
            raise Problem(409, "Conflict", str(exc),
                          errors=[{"field": "body.limit_minor", "message": str(exc)}]) from None
        return _usage(budget, start, end)

    @router.get("/budgets/{region}/{period}", summary="Budget usage: limit, reserved, posted, remaining, percent",
                responses=problems(404, 422, described={404: "Unknown region, or no budget for the period."}))
    async def get_budget(region: RegionPath, period: PeriodPath,
                         principal: Principal = Depends(auth)) -> dict[str, Any]:
        r = reader(principal, region)
        start, end = _period(period, granularity, r, "path.period")
        async with engine.connect() as conn:
            budget = await queries.get_budget(conn, r.code, period)
            if budget is None:
                raise Problem(404, "Not Found", f"no budget for {r.code} {period}")
            changes = await queries.budget_changes(conn, r.code, period)
            overruns = await queries.overrun_count(conn, r.code, period)
        out = _usage(budget, start, end)
        out["overruns"] = overruns
        out["changes"] = [c.__dict__ for c in changes]
        return out

    @router.get("/budgets/{region}/{period}/allowances",
                summary="Budget allowances of a period: granted, charged, released, reported spent (ADR 0012)",
                responses=problems(404, 422, described={404: "Unknown region."}))
    async def get_allowances(region: RegionPath, period: PeriodPath, principal: Principal = Depends(auth),
                             status: Annotated[Literal["open", "all"], Query()] = "all") -> dict[str, Any]:
        r = reader(principal, region)
        _period(period, granularity, r, "path.period")
        async with engine.connect() as conn:
            found = await queries.allowances(conn, r.code, period, open_only=status == "open")
        return {"region": r.code, "period": period, "currency": r.currency, "allowances": found}

    @router.get("/accounts/{account_key}/balance", summary="Balance of one account in a region",
                responses=problems(404, described={404: "Unknown region, or the account has no entries."}))
    async def balance(account_key: Annotated[str, Path(pattern=ACCOUNT, description=(
                          "seller:<id>, carrier:<id>, platform, payable, expense or budget:<period>"))],
                      region: RegionQuery, principal: Principal = Depends(auth)) -> dict[str, Any]:
        r = reader(principal, region)
        try:
            journal.check_account_key(account_key)
        except journal.UnknownAccount as exc:
            raise Problem(404, "Not Found", str(exc), errors=[{"field": "account_key", "message": str(exc)}]) from None
        async with engine.connect() as conn:
            found = await queries.account_balance(conn, r.code, account_key)
        if found is None:
            raise Problem(404, "Not Found", f"account {account_key} has no entries in {r.code}",
                          errors=[{"field": "account_key", "message": "unknown account"}])
        return {"account_key": account_key, "region": r.code, **found,
                "balance": _major(found["balance_minor"], found["currency"])}

    @router.get("/statements/{party}", summary="Statement of a liable party for a period (JSON or CSV)",
                responses={**csv_or_json("The statement: JSON, or CSV with format=csv."),
                           **problems(404, described={404: "Unknown region."})})
    async def statement(party: Annotated[str, Path(pattern=PARTY, description="seller:<id>, carrier:<id> or "
                                                                              "platform")],
                        region: RegionQuery, period: PeriodQuery,
                        format: Annotated[Literal["json", "csv"], Query()] = "json",
                        principal: Principal = Depends(auth)) -> Any:
        r = reader(principal, region)
        if not journal.is_party_account(party):
            raise Problem(404, "Not Found", f"{party!r} is not a liable party (seller:<id>, carrier:<id>, platform)",
                          errors=[{"field": "party", "message": "unknown liable party"}])
        start, end = _period(period, granularity, r)
        async with engine.connect() as conn:
            opening, lines = await queries.statement_lines(conn, r.code, party, start, end)
        charged = sum(x["amount_minor"] for x in lines if x["kind"] == "charge")
        reversed_ = -sum(x["amount_minor"] for x in lines if x["kind"] == "reversal")
        closing = opening + sum(x["amount_minor"] for x in lines)
        if format == "csv":
            filename = f"statement-{r.code}-{party.replace(':', '_')}-{period}.csv"
            return Response(_csv(lines, r.currency), media_type="text/csv",
                            headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        return {"party": party, "region": r.code, "period": period, "currency": r.currency,
                "period_start": start, "period_end": end, "opening_balance_minor": opening,
                "charged_minor": charged, "reversed_minor": reversed_, "closing_balance_minor": closing,
                "closing_balance": _major(closing, r.currency), "lines": lines}

    @router.get("/parked-events", summary="Events waiting for their compensation (oldest first)",
                responses=problems(404, described={404: "Unknown region."}))
    async def list_parked(region: RegionQuery,
                          limit: Annotated[int, Query(ge=1, le=1000, description="At most this many.")] = 100,
                          principal: Principal = Depends(auth)) -> dict[str, Any]:
        """Redemptions, expiries, revocations and corrections that arrived before the compensation they
        belong to. They are applied as soon as it arrives and dead-lettered at ``dead_letter_at``."""
        r = reader(principal, region)
        async with engine.connect() as conn:
            items = await queries.parked_events(conn, [r.code], park_seconds, limit=limit)
        return {"region": r.code, "park_window_seconds": park_seconds, "count": len(items), "items": items}

    @router.get("/compensations/{compensation_id}/lineage",
                summary="Request, reservation, charge, redemption and corrections of one compensation",
                responses=problems(404, described={404: "No such compensation in the caller's regions."}))
    async def get_lineage(compensation_id: Annotated[str, Path(pattern=IDENTIFIER)],
                          principal: Principal = Depends(auth)) -> dict[str, Any]:
        principal.require_role(*READERS)
        async with engine.connect() as conn:
            found = await queries.lineage(conn, compensation_id)
        if found is None or not principal.can_access(found["region"]):
            # the same answer whether it does not exist or belongs to a region the caller cannot see
            raise Problem(404, "Not Found", f"no compensation {compensation_id} in your regions")
        return found

    @router.get("/reports/breakage", summary="Expired and unredeemed voucher value of a period",
                responses=problems(404, described={404: "Unknown region."}))
    async def breakage(region: RegionQuery, period: PeriodQuery,
                       principal: Principal = Depends(auth)) -> dict[str, Any]:
        r = reader(principal, region)
        _period(period, granularity, r)
        async with engine.connect() as conn:
            by_kind = await queries.breakage_report(conn, r.code, period)
        total = sum(int(k["breakage_minor"]) for k in by_kind)
        return {"region": r.code, "period": period, "currency": r.currency, "breakage_minor": total,
                "breakage": _major(total, r.currency), "by_kind": by_kind}

    return router


def _csv(lines: list[dict[str, Any]], currency: str) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = ["occurred_at", "tx_id", "kind", "compensation_id", "correction_id", "reverses_tx_id",
               "corrects_tx_id", "currency", "amount_minor", "amount"]
    writer.writerow(columns)
    for x in lines:
        writer.writerow([x["occurred_at"].isoformat(), x["tx_id"], x["kind"], x["compensation_id"],
                         x["correction_id"] or "", x["reverses_tx_id"] or "", x["corrects_tx_id"] or "",
                         x["currency"], x["amount_minor"], Money(x["amount_minor"], currency).format().split()[0]])
    return buf.getvalue()
