"""How the dashboard writes numbers for people: money in the currency's own exponent (IDR and VND without
decimals), shares as percentages, durations in the largest sensible unit. Display only: never parsed back."""

from __future__ import annotations

from decimal import Decimal

from shared.money import currency_exponent

DASH = "\u2013"  # shown for "not defined" (a ratio over nothing), never as 0


def money(minor: int | None, currency: str) -> str:
    """``1,250,000 IDR``, ``12.34 USD``: grouped thousands, exactly the currency's minor-unit digits."""
    if minor is None:
        return DASH
    exponent = currency_exponent(currency)
    return f"{Decimal(int(minor)).scaleb(-exponent):,.{exponent}f} {currency}"


def money_short(minor: float, currency: str) -> str:
    """An axis tick: major units, compact (``12.5k``, ``3.2M``), without the currency code."""
    major = float(minor) / 10 ** currency_exponent(currency)
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(major) >= size:
            return f"{major / size:.3g}{suffix}"
    return f"{major:.{min(currency_exponent(currency), 2)}f}" if major % 1 else f"{major:.0f}"


def count(n: int | None) -> str:
    return DASH if n is None else f"{int(n):,}"


def pct(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value * 100:.{digits}f}%"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    s = float(seconds)
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 2 * 86_400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86_400:.1f} d"
