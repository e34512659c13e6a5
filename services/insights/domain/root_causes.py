"""Root causes of a change between two periods, shaped for the API and CSV (pure; ``movers.py`` computes).

Input: per dimension value (a reason, carrier, seller or strategy) the period's tickets, compensated
tickets, compensations and amount (minor units), as ``reports._dimension_rows`` reads them. Output: the top
movers by tickets or amount with their contribution to the total change, and for two ratios, the
compensation rate (compensated tickets / tickets) and the cost per ticket (minor units / tickets), the
change split exactly into mix and rate effects per value.

Shares and effects are exact ``Fraction``s in the domain; here each is shown as a decimal string rounded
half away from zero (``DECIMALS`` places) and, for the effects, also as the exact fraction ``"p/q"``, so a
reader can check that mix + rate equals the change with no residual (the rounded decimals can be one unit
apart in the last place).
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from services.insights.domain.movers import (
    Measure,
    Mover,
    Others,
    RatioDecomposition,
    RatioPart,
    Tally,
    UndefinedRatio,
    as_decimal,
    decompose_ratio,
    top_movers,
)

DECIMALS = 6
# ratio name -> (numerator field, denominator field) of a dimension row
RATIOS = {"compensation_rate": ("compensated", "tickets"), "cost_per_ticket_minor": ("amount_minor", "tickets")}


def _dec(value: Fraction | None) -> str | None:
    return None if value is None else str(as_decimal(value, DECIMALS))


def _exact(value: Fraction) -> str:
    return f"{value.numerator}/{value.denominator}" if value.denominator != 1 else str(value.numerator)


def _tally(t: Tally) -> dict[str, int]:
    return {"tickets": t.count, "amount_minor": t.amount_minor}


def _mover(m: Mover | Others) -> dict[str, Any]:
    out: dict[str, Any] = {
        "previous": _tally(m.previous), "current": _tally(m.current), "ticket_change": m.count_change,
        "amount_change_minor": m.amount_change_minor, "ticket_contribution": _dec(m.count_contribution),
        "amount_contribution": _dec(m.amount_contribution)}
    if isinstance(m, Mover):
        out = {"key": m.key, "presence": m.presence.value, **out, "previous_share": _dec(m.previous_share),
               "current_share": _dec(m.current_share)}
    else:
        out = {"values": m.values, **out}
    return out


def _decomposition(d: RatioDecomposition) -> dict[str, Any]:
    return {
        "previous": _dec(d.previous_rate), "current": _dec(d.current_rate), "change": _dec(d.change),
        "mix": _dec(d.mix), "rate": _dec(d.rate),
        "exact": {"previous": _exact(d.previous_rate), "current": _exact(d.current_rate),
                  "change": _exact(d.change), "mix": _exact(d.mix), "rate": _exact(d.rate)},
        "segments": [{
            "key": e.key, "presence": e.presence.value,
            "previous": {"numerator": e.previous.numerator, "denominator": e.previous.denominator},
            "current": {"numerator": e.current.numerator, "denominator": e.current.denominator},
            "previous_weight": _dec(e.previous_weight), "current_weight": _dec(e.current_weight),
            "previous_ratio": _dec(e.previous_rate), "current_ratio": _dec(e.current_rate),
            "mix": _dec(e.mix), "rate": _dec(e.rate), "total": _dec(e.total),
            "exact": {"mix": _exact(e.mix), "rate": _exact(e.rate), "total": _exact(e.total)},
        } for e in d.segments]}


def explain_change(previous: Mapping[str, Mapping[str, int]], current: Mapping[str, Mapping[str, int]], *,
                   top: int = 5, measure: Measure = Measure.COUNT) -> dict[str, Any]:
    """``{"measure", "movers": {...}, "ratios": {name: decomposition or {"undefined": why}}}``."""
    report = top_movers({k: Tally(v["tickets"], v["amount_minor"]) for k, v in previous.items()},
                        {k: Tally(v["tickets"], v["amount_minor"]) for k, v in current.items()},
                        top=top, measure=measure)
    ratios: dict[str, Any] = {}
    for name, (num, den) in RATIOS.items():
        try:
            ratios[name] = _decomposition(decompose_ratio(
                {k: RatioPart(v[num], v[den]) for k, v in previous.items() if v[num] or v[den]},
                {k: RatioPart(v[num], v[den]) for k, v in current.items() if v[num] or v[den]}))
        except UndefinedRatio as exc:
            ratios[name] = {"undefined": f"no tickets: {exc}"}
        except ValueError as exc:
            # e.g. a strategy's compensations counted in a period where it decided no ticket
            ratios[name] = {"undefined": str(exc)}
    return {
        "measure": measure.value,
        "movers": {
            "previous_total": _tally(report.previous_total), "current_total": _tally(report.current_total),
            "ticket_change": report.count_change, "amount_change_minor": report.amount_change_minor,
            "ticket_change_ratio": _dec(report.count_change_ratio),
            "top": [_mover(m) for m in report.movers],
            "others": None if report.others is None else _mover(report.others)},
        "ratios": ratios}
