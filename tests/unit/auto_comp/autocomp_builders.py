"""Builders for strategy files and tickets used by the auto_comp unit tests."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from services.auto_comp.domain.loader import load_strategies
from services.auto_comp.domain.model import Strategy, StrategySet
from shared.contracts import events as ev

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)

BASE: dict[str, Any] = {
    "id": "sg-late",
    "version": 1,
    "scenario": "late_delivery",
    "regions": ["SG"],
    "currency": "SGD",
    "effective_from": "2026-01-01T00:00:00+08:00",
    "enabled": True,
    "mode": "active",
    "priority": 100,
    "match": {"reasons": ["late_delivery"], "thresholds": {"days_late": {"min": 3}}},
    "compensation": {"kind": "voucher", "amount": {"percent": 10, "floor": "2.00", "cap": "15.00"},
                     "voucher": {"validity_days": 30, "min_spend": "20.00"}},
    "liability": [
        {"when": "seller_late_dispatch", "if_handoff_missing": "ticket_time",
         "shares": [{"party": "seller", "percent": 100}]},
        {"when": "carrier_delay", "if_handoff_missing": "next_rule", "shares": [{"party": "carrier", "percent": 100}]},
        {"when": "otherwise", "shares": [{"party": "platform", "percent": 100}]},
    ],
}


def strategy_dict(**overrides: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for key, value in overrides.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def write(path: Path, *strategies: dict[str, Any], name: str = "s.yaml") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    f = path / name
    f.write_text(yaml.safe_dump({"strategies": list(strategies)}, sort_keys=False))
    return f


def load_one(tmp_path: Path, **overrides: Any) -> Strategy:
    return load(tmp_path, strategy_dict(**overrides)).strategies[0]


def load(tmp_path: Path, *strategies: dict[str, Any]) -> StrategySet:
    write(tmp_path, *strategies)
    return load_strategies(tmp_path)


def money(minor: int, currency: str = "SGD") -> ev.PositiveMoney:
    return ev.PositiveMoney(amount_minor=minor, currency=currency)


def ticket(*, reason: str = "late_delivery", order: int = 10_000, currency: str = "SGD", buyer: str = "B1",
           days_late: int | None = 3, ticket_id: str = "T1", order_id: str = "O1", **kw: Any) -> ev.TicketOpened:
    promised = kw.pop("promised_delivery_at", T0 - timedelta(days=10))
    fields: dict[str, Any] = {
        "ticket_id": ticket_id, "order_id": order_id, "buyer_id": buyer, "seller_id": "S1",
        "reason": reason, "order_amount": money(order, currency),
    }
    if days_late is not None:
        fields["promised_delivery_at"] = promised
        fields["delivered_at"] = promised + timedelta(days=days_late)
    fields.update(kw)
    return ev.TicketOpened(**fields)
