import math
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.intake.domain.fingerprint import fingerprint
from services.intake.domain.items import ITEM_MODELS
from services.intake.domain.keys import ANY, ScopeError, parse_regions, parse_scope
from services.intake.domain.ratelimit import RateLimiter, retry_after_header
from shared.money import MAX_AMOUNT_MINOR
from shared.regions import catalogue
from tests.unit.intake.intake_samples import sample


def item(event_type, raw):
    return ITEM_MODELS[event_type].model_validate(raw).model_dump(mode="json")


@given(st.permutations(list(sample("ticket.opened"))))
def test_fingerprint_ignores_key_order(keys):
    raw = sample("ticket.opened")
    shuffled = {k: raw[k] for k in keys}
    assert fingerprint("ticket.opened", item("ticket.opened", shuffled)) == \
        fingerprint("ticket.opened", item("ticket.opened", raw))


def test_fingerprint_treats_equal_instants_and_omitted_nulls_alike():
    base = fingerprint("ticket.opened", item("ticket.opened", sample("ticket.opened")))
    offset = sample("ticket.opened", occurred_at="2026-11-20T17:30:00+08:00", description=None)
    assert fingerprint("ticket.opened", item("ticket.opened", offset)) == base


@given(st.integers(min_value=1, max_value=MAX_AMOUNT_MINOR - 1))
def test_fingerprint_changes_with_any_amount(amount):
    raw = sample("buyer.order_placed", amount={"amount_minor": amount, "currency": "SGD"})
    other = sample("buyer.order_placed", amount={"amount_minor": amount + 1, "currency": "SGD"})
    assert fingerprint("buyer.order_placed", item("buyer.order_placed", raw)) != \
        fingerprint("buyer.order_placed", item("buyer.order_placed", other))


def test_fingerprint_includes_the_event_type():
    raw = sample("voucher.expired")
    expired = fingerprint("voucher.expired", item("voucher.expired", raw))
    assert expired != fingerprint("voucher.revoked", item("voucher.expired", raw))


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_token_bucket_allows_a_burst_of_one_second_then_paces():
    clock = Clock()
    limiter = RateLimiter(clock)
    assert all(limiter.take("k", 5) == 0 for _ in range(5))
    wait = limiter.take("k", 5)
    assert wait == pytest.approx(0.2)
    clock.now += 0.2
    assert limiter.take("k", 5) == 0
    assert limiter.take("k", 5) > 0
    assert limiter.take("other", 5) == 0  # buckets are per key


@given(st.integers(min_value=1, max_value=1000), st.lists(st.floats(min_value=0, max_value=2), max_size=60))
def test_token_bucket_never_admits_more_than_burst_plus_refill(rate, gaps):
    clock = Clock()
    limiter = RateLimiter(clock)
    admitted = 0
    for gap in gaps:
        clock.now += gap
        admitted += limiter.take("k", rate) == 0
    assert admitted <= rate + math.floor(sum(gaps) * rate) + 1


def test_rate_change_takes_effect_and_memory_stays_bounded():
    clock = Clock()
    limiter = RateLimiter(clock, max_keys=3)
    for k in range(10):
        limiter.take(f"k{k}", 1)
    assert len(limiter._buckets) <= 3
    limiter.take("a", 1)
    assert limiter.take("a", 1) > 0
    assert limiter.take("a", 100) == 0


def test_retry_after_is_whole_seconds_never_zero():
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(1.2) == "2"


def test_scopes_parse_and_refuse_unknowns():
    assert parse_regions("SG, US", catalogue()) == ["SG", "US"]
    assert parse_regions("*", catalogue()) == [ANY]
    with pytest.raises(ScopeError, match="XX"):
        parse_regions("SG,XX", catalogue())
    with pytest.raises(ScopeError):
        parse_regions(" , ", catalogue())
    with pytest.raises(ScopeError):
        parse_scope("*,ticket.opened", ["ticket.opened"], "event types")
    assert parse_scope("ticket.opened", ["ticket.opened"], "event types") == ["ticket.opened"]


def test_items_keep_the_contract_strict_on_nested_money():
    with pytest.raises(ValueError):
        item("voucher.redeemed", sample("voucher.redeemed", discount={"amount_minor": 1, "currency": "SGD",
                                                                      "cents": 1}))
    parsed = ITEM_MODELS["voucher.redeemed"].model_validate(sample("voucher.redeemed"))
    assert isinstance(parsed.occurred_at, datetime) and parsed.occurred_at.tzinfo == UTC
