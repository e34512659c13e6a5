from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.money import CurrencyMismatch, Money, Rounding, currency_exponent

amounts = st.integers(min_value=-(10**15), max_value=10**15)


def test_floats_are_refused_everywhere():
    with pytest.raises(TypeError):
        Money(1.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money.from_major(1.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money(100, "USD").times(0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money(True, "USD")  # type: ignore[arg-type]


def test_exponents_follow_iso_4217():
    assert currency_exponent("USD") == 2
    assert currency_exponent("IDR") == 0
    assert currency_exponent("VND") == 0
    with pytest.raises(ValueError, match="unknown currency"):
        currency_exponent("XXX")


def test_from_major_is_exact_and_refuses_extra_decimals():
    assert Money.from_major("12.34", "USD") == Money(1234, "USD")
    assert Money.from_major("15000", "IDR") == Money(15000, "IDR")
    with pytest.raises(ValueError, match="decimals"):
        Money.from_major("1.5", "IDR")
    with pytest.raises(ValueError, match="decimals"):
        Money.from_major("1.005", "USD")


def test_currency_mismatch_is_an_error():
    with pytest.raises(CurrencyMismatch):
        Money(1, "USD") + Money(1, "SGD")
    with pytest.raises(CurrencyMismatch):
        _ = Money(1, "USD") < Money(1, "SGD")


@pytest.mark.parametrize(("minor", "pct", "rounding", "expected"), [
    (1005, 10, Rounding.HALF_UP, 101),  # 100.5 -> 101
    (1005, 10, Rounding.HALF_EVEN, 100),  # 100.5 -> 100
    (1015, 10, Rounding.HALF_EVEN, 102),  # 101.5 -> 102
    (1009, 10, Rounding.DOWN, 100),
    (1001, 10, Rounding.UP, 101),
    (-1005, 10, Rounding.HALF_UP, -101),  # half away from zero
    (333, "12.5", Rounding.HALF_UP, 42),  # 41.625 -> 42
])
def test_percent_rounding_rules(minor, pct, rounding, expected):
    assert Money(minor, "USD").percent(pct, rounding).minor == expected


def test_zero_decimal_currency_rounds_to_whole_units():
    # 10% of IDR 123,456 = 12,345.6 -> 12,346 (half up, whole rupiah: exponent 0)
    assert Money(123_456, "IDR").percent(10).minor == 12_346


def test_clamp_floor_and_cap():
    floor, cap = Money(200, "USD"), Money(1500, "USD")
    assert Money(100, "USD").clamp(floor, cap) == floor
    assert Money(2000, "USD").clamp(floor, cap) == cap
    assert Money(700, "USD").clamp(floor, cap) == Money(700, "USD")


@given(amounts, st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=8)
       .filter(lambda w: sum(w) > 0))
def test_allocate_parts_sum_exactly_and_stay_near_exact_share(minor, weights):
    parts = Money(minor, "USD").allocate(weights)
    assert sum(p.minor for p in parts) == minor
    total = sum(weights)
    for part, w in zip(parts, weights, strict=True):
        exact = Fraction(minor * w, total)
        assert abs(Fraction(part.minor) - exact) < 1
        if w == 0:
            assert part.minor == 0


@given(amounts, amounts)
def test_addition_is_exact_and_reversible(a, b):
    x, y = Money(a, "SGD"), Money(b, "SGD")
    assert (x + y - y) == x
    assert (x + y).minor == a + b


@given(st.integers(min_value=0, max_value=10**12),
       st.decimals(min_value=0, max_value=100, places=2, allow_nan=False, allow_infinity=False))
def test_percent_never_off_by_more_than_half_a_minor_unit(minor, pct):
    got = Money(minor, "USD").percent(pct).minor
    exact = Fraction(minor) * Fraction(Decimal(pct)) / 100
    assert abs(Fraction(got) - exact) <= Fraction(1, 2)


def test_format_is_for_people_only():
    assert Money(1234, "USD").format() == "12.34 USD"
    assert Money(15000, "IDR").format() == "15000 IDR"
