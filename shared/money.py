"""Exact money: integer minor units of an ISO 4217 currency. Floats are refused everywhere.

Rounding is explicit: every operation that can produce a fraction of a minor unit takes a ``Rounding``
and the default is ``HALF_UP`` (half a minor unit rounds away from zero), the rule the strategies and the
reports state.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction

from shared.regions import catalogue

# The bounds every contract, API and store shares (ADR 0006, "Bounds"). One amount (a compensation, an order,
# a discount, a share of a liability) is at most MAX_AMOUNT_MINOR minor units: VND 10^12 is about
# USD 40 million, far above any single compensation in any currency of the catalogue, and 9.2 million such
# amounts still sum inside a bigint. A budget's limit for one period is at most MAX_BUDGET_MINOR (a thousand
# of the largest amounts). Totals the ledger keeps (balances, usage) are bigint: at most MAX_TOTAL_MINOR.
MAX_AMOUNT_MINOR = 10**12
MAX_BUDGET_MINOR = 10**15
MAX_TOTAL_MINOR = 2**63 - 1


class Rounding(enum.StrEnum):
    HALF_UP = "half_up"
    HALF_EVEN = "half_even"
    DOWN = "down"  # toward negative infinity
    UP = "up"  # toward positive infinity


_DECIMAL_ROUNDING = {
    Rounding.HALF_UP: ROUND_HALF_UP,
    Rounding.HALF_EVEN: ROUND_HALF_EVEN,
    Rounding.DOWN: ROUND_FLOOR,
    Rounding.UP: ROUND_CEILING,
}


class CurrencyMismatch(ValueError):
    pass


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int of minor units, got {type(value).__name__}")
    return value


def currency_exponent(currency: str) -> int:
    """ISO 4217 exponent of a currency known to the region catalogue."""
    for r in catalogue().regions.values():
        if r.currency == currency:
            return r.exponent
    raise ValueError(f"unknown currency {currency!r}: no region in the catalogue uses it")


def round_fraction(value: Fraction, rounding: Rounding = Rounding.HALF_UP) -> int:
    """Round an exact rational number of minor units to an int by the given rule."""
    with localcontext() as ctx:
        ctx.prec = 60
        d = Decimal(value.numerator) / Decimal(value.denominator)
        return int(d.quantize(Decimal(1), rounding=_DECIMAL_ROUNDING[rounding]))


@dataclass(frozen=True, slots=True, order=False)
class Money:
    minor: int
    currency: str

    def __post_init__(self) -> None:
        _check_int(self.minor, "Money.minor")
        if not isinstance(self.currency, str) or len(self.currency) != 3 or not self.currency.isupper():
            raise ValueError(f"currency must be an ISO 4217 code, got {self.currency!r}")

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    @classmethod
    def from_major(cls, amount: str | int | Decimal, currency: str) -> Money:
        """Parse a major-unit amount ("12.34") exactly; more decimals than the exponent is an error."""
        if isinstance(amount, float):
            raise TypeError("floats are not money: pass a string, int or Decimal")
        exponent = currency_exponent(currency)
        scaled = Decimal(str(amount)).scaleb(exponent)
        if scaled != scaled.to_integral_value():
            raise ValueError(f"{amount} has more than {exponent} decimals for {currency}")
        return cls(int(scaled), currency)

    def _same(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatch(f"{self.currency} vs {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor + other.minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor - other.minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.minor, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.minor < other.minor

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.minor <= other.minor

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.minor > other.minor

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.minor >= other.minor

    def times(self, factor: int | Fraction | Decimal | str, rounding: Rounding = Rounding.HALF_UP) -> Money:
        """Multiply by an exact factor (e.g. Fraction(1, 10) or Decimal("0.1")), rounding explicitly."""
        if isinstance(factor, float):
            raise TypeError("floats are not allowed in money arithmetic")
        exact = Fraction(self.minor) * Fraction(factor)
        return Money(round_fraction(exact, rounding), self.currency)

    def percent(self, pct: int | Decimal | str, rounding: Rounding = Rounding.HALF_UP) -> Money:
        return self.times(Fraction(Decimal(str(pct))) / 100, rounding)

    def clamp(self, floor: Money | None = None, cap: Money | None = None) -> Money:
        out = self
        if floor is not None and out < floor:
            out = floor
        if cap is not None and out > cap:
            out = cap
        return out

    def allocate(self, weights: list[int]) -> list[Money]:
        """Split into parts proportional to integer weights; parts sum exactly to self.

        Largest-remainder method: each part gets the floor of its exact share, and the leftover minor units
        go one each to the parts with the largest remainders (earlier parts win ties), so the split is
        deterministic and exact.
        """
        total = 0
        for w in weights:
            if _check_int(w, "weight") < 0:
                total = 0
                break
            total += w
        if total == 0:
            raise ValueError("weights must be non-negative ints with a positive sum")
        sign = -1 if self.minor < 0 else 1
        magnitude = abs(self.minor)
        base = [magnitude * w // total for w in weights]
        leftover = magnitude - sum(base)
        if leftover:  # an exact split (one party, round shares) has nothing to hand out
            remainders = [magnitude * w % total for w in weights]
            order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
            for i in order[:leftover]:
                base[i] += 1
        currency = self.currency
        return [Money(sign * b, currency) for b in base]

    def format(self) -> str:
        """Major-unit text for people ("12.34 USD"); never parsed back into money paths."""
        exponent = currency_exponent(self.currency)
        return f"{Decimal(self.minor).scaleb(-exponent):.{exponent}f} {self.currency}"

    def __str__(self) -> str:
        return f"{self.minor} {self.currency} (minor units)"
