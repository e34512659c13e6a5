"""Market comparison (issue 15 part 6): reference files validated with errors naming the field; the shipped
samples load; strategies placed below / at / above the range; trailing the best reference flagged."""

from __future__ import annotations

from datetime import date
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.insights.domain.market import Effective, MarketFileError, load_references, place, weighted_median
from services.insights.domain.rollups import share_bp
from shared.regions import catalogue

TODAY = date(2026, 12, 6)
SAMPLES = Path("services/insights/market")

GOOD = """
region: MY
currency: MYR
references:
  - {marketplace: Shopee, policy: On-Time Guarantee, scenario: late_delivery, amount_minor: 500,
     what: RM5 voucher, source: help centre, as_of: 2024-04-01, status: example}
  - {marketplace: Lazada, policy: LazCash, scenario: late_delivery, amount_minor: 300,
     what: LazCash, source: help centre, as_of: 2024-04-01, status: example}
  - {marketplace: Amazon, policy: A-to-z, scenario: not_received, percent_of_order: 100, cap_minor: 20000,
     what: refund, source: help page, as_of: 2024-04-01, status: verified}
"""


def test_every_shipped_region_has_a_valid_sample_file_marked_as_examples():
    for code in catalogue().codes():
        r = catalogue().get(code)
        refs = load_references((SAMPLES / f"{code}.yaml").read_bytes(), region=code, currency=r.currency, today=TODAY)
        assert refs.references and all(x.status == "example" for x in refs.references)
        assert all(x.source and x.as_of for x in refs.references)


@pytest.mark.parametrize(("change", "field"), [
    (("amount_minor: 500", "amount_minor: -5"), "references[0].amount_minor"),
    (("amount_minor: 500", "amount_minor: 500, percent_of_order: 10"), "references[0]"),
    (("scenario: late_delivery, amount_minor: 500", "scenario: slow, amount_minor: 500"), "references[0].scenario"),
    (("source: help centre, as_of: 2024-04-01, status: example}\n  - {marketplace: Lazada",
      "as_of: 2024-04-01, status: example}\n  - {marketplace: Lazada"), "references[0].source"),
    (("as_of: 2024-04-01, status: verified", "as_of: 2027-04-01, status: verified"), "references[2].as_of"),
    (("status: verified", "status: maybe"), "references[2].status"),
    (("percent_of_order: 100", "percent_of_order: 150"), "references[2].percent_of_order"),
    (("currency: MYR", "currency: SGD"), "currency"),
    (("region: MY", "region: SG"), "region"),
    (("what: LazCash,", "what: LazCash, colour: red,"), "references[1].colour"),
])
def test_a_bad_reference_file_is_refused_naming_the_field(change, field):
    text = GOOD.replace(*change, 1)
    assert text != GOOD
    with pytest.raises(MarketFileError) as err:
        load_references(text, region="MY", currency="MYR", today=TODAY)
    assert err.value.field == field, str(err.value)


def test_not_yaml_and_not_a_mapping_are_refused():
    with pytest.raises(MarketFileError, match="file"):
        load_references("region: [", region="MY", currency="MYR", today=TODAY)
    with pytest.raises(MarketFileError, match="file"):
        load_references("- 1", region="MY", currency="MYR", today=TODAY)


def test_strategies_placed_against_the_range_and_trailing_the_best_reference_flagged():
    refs = load_references(GOOD, region="MY", currency="MYR", today=TODAY).references
    effective = [Effective("ontime", "late_delivery", 40, 400),  # between 300 and 500: at, trails Shopee
                 Effective("generous", "late_delivery", 10, 600),  # above
                 Effective("stingy", "late_delivery", 5, 200),  # below
                 Effective("lost", "not_received", 8, 9_000),  # 100% of a 10,000 average order: below
                 Effective("damaged", "damaged", 3, 100)]  # no reference
    out = place(effective, refs, average_order_minor=10_000)
    by = {r["strategy"]: r for r in out["strategies"]}
    assert by["ontime"]["position"] == "at" and by["ontime"]["gap_to_best_minor"] == 100
    assert by["generous"]["position"] == "above" and by["stingy"]["position"] == "below"
    assert by["lost"]["reference_low_minor"] == 10_000 and by["lost"]["position"] == "below"
    assert by["lost"]["median_pct_of_average_order"] == 90.0
    assert by["damaged"]["position"] == "no reference"
    assert out["trails_best_reference"] is True
    assert [(t["scenario"], sorted(t["strategies"])) for t in out["trailing"]] == [
        ("late_delivery", ["ontime", "stingy"]), ("not_received", ["lost"])]
    # the cap applies to a large order; without an average order value a percentage has no amount
    assert refs[2].amount_at(50_000) == 20_000 and refs[2].amount_at(None) is None
    assert place([Effective("generous", "late_delivery", 1, 600)], refs, None)["trails_best_reference"] is False


@given(st.lists(st.tuples(st.integers(1, 10_000), st.integers(1, 50)), min_size=1, max_size=30))
def test_the_weighted_median_is_the_nearest_rank_median_of_the_values_spelt_out(counts):
    spelt = sorted(v for v, c in counts for _ in range(c))
    assert weighted_median(counts) == spelt[(len(spelt) + 1) // 2 - 1]


@given(st.integers(1, 10**9), st.integers(1, 10**9))
def test_share_of_the_order_in_basis_points_rounds_half_up(amount, order):
    bp = share_bp(amount, order)
    assert abs(Fraction(amount * 10_000, order) - bp) <= Fraction(1, 2)
    assert Fraction(amount * 10_000, order) - bp < Fraction(1, 2) or bp * 2 * order == 20_000 * amount + order


def test_share_examples():
    assert share_bp(150, 5000) == 300 and share_bp(1, 3) == 3333 and share_bp(1, 8) == 1250
    assert share_bp(1, 4_000) == 3 and share_bp(1, 40_000) == 0  # 2.5 bp rounds up, 0.25 down
