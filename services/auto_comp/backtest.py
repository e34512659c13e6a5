"""Reading historical tickets for the backtest: JSON Lines (envelopes, or {region, occurred_at, payload})
or CSV (one column per ticket field, money in minor units). Nothing is published or written."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.auto_comp.domain.backtest import HistoricalTicket
from shared.contracts.events import TicketOpened
from shared.contracts.registry import region_currency_errors

CSV_MONEY = ("order_amount_minor", "affected_amount_minor")
CSV_TIMES = ("order_placed_at", "dispatch_due_at", "shipped_at", "promised_delivery_at", "delivered_at")


class BacktestInputError(ValueError):
    pass


def _ticket(where: str, region: Any, occurred_at: Any, payload: dict[str, Any]) -> HistoricalTicket:
    if not isinstance(region, str):
        raise BacktestInputError(f"{where}: region is required")
    try:
        at = datetime.fromisoformat(str(occurred_at))
    except ValueError:
        raise BacktestInputError(f"{where}: occurred_at {occurred_at!r} is not an ISO 8601 timestamp") from None
    if at.tzinfo is None:
        raise BacktestInputError(f"{where}: occurred_at needs a UTC offset")
    try:
        ticket = TicketOpened.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise BacktestInputError(f"{where}: payload.{field}: {first['msg']}") from None
    errors = region_currency_errors(region, ticket)
    if errors:
        raise BacktestInputError(f"{where}: {errors[0][0]}: {errors[0][1]}")
    return HistoricalTicket(region, at, ticket)


def _jsonl(path: Path) -> Iterator[HistoricalTicket]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BacktestInputError(f"{where}: not JSON: {exc}") from None
            if not isinstance(row, dict) or not isinstance(row.get("payload"), dict):
                raise BacktestInputError(f"{where}: expected an object with region, occurred_at and payload")
            if row.get("event_type", "ticket.opened") != "ticket.opened":
                continue  # a full event log may carry other events; only tickets are decided
            yield _ticket(where, row.get("region"), row.get("occurred_at"), row["payload"])


def _csv(path: Path) -> Iterator[HistoricalTicket]:
    with path.open(encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.DictReader(f), 2):
            where = f"{path}:{n}"
            data: dict[str, Any] = {k: v for k, v in row.items() if k and v not in (None, "")}
            region, occurred, currency = data.pop("region", None), data.pop("occurred_at", None), data.pop(
                "currency", None)
            for key in CSV_MONEY:
                if key in data:
                    try:
                        minor = int(data.pop(key))
                    except ValueError:
                        raise BacktestInputError(f"{where}: {key} must be whole minor units") from None
                    data[key.removesuffix("_minor")] = {"amount_minor": minor, "currency": currency}
            yield _ticket(where, region, occurred, data)


def read_tickets(path: str | Path) -> list[HistoricalTicket]:
    path = Path(path)
    if not path.is_file():
        raise BacktestInputError(f"{path}: no such file")
    reader = _csv if path.suffix.lower() == ".csv" else _jsonl
    return list(reader(path))
