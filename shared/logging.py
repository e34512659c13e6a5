"""Structured JSON logs carrying the correlation id of the request or event being handled."""

from __future__ import annotations

import contextvars
import logging
import sys
import zlib
from datetime import UTC, datetime
from typing import Any

import orjson

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
# Field names whose values never reach a log line, whatever a caller passes in ``extra``.
_SECRET_KEYS = ("password", "secret", "token", "api_key", "apikey", "authorization", "cookie")


# Share of correlation ids whose event lines (requests, decisions, denials) are logged at INFO, in
# hundredths of a percent (LOG_EVENTS_PERCENT). Chosen by a hash of the correlation id, the same in every
# service and process: one ticket's lines are all in or all out, across intake, auto_comp and the ledger.
_events_permyriad = 10_000


def traced(cid: str | None) -> bool:
    """Whether this correlation id's event lines are logged (LOG_EVENTS_PERCENT)."""
    if _events_permyriad >= 10_000:
        return True
    if _events_permyriad <= 0 or not cid:
        return False
    return zlib.crc32(cid.encode()) % 10_000 < _events_permyriad


def log_event(logger: logging.Logger, msg: str, cid: str | None = None, **fields: Any) -> None:
    """One business event at INFO (a request, a decision, a denial), if its correlation id is sampled.

    ``cid`` defaults to the one being handled; batch handlers pass each event's own, because a batch
    carries many tickets and the context holds only the first one's.
    """
    cid = cid or correlation_id.get()
    if traced(cid) and logger.isEnabledFor(logging.INFO):
        logger.info(msg, extra={**fields, "correlation_id": cid})


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        cid = correlation_id.get()
        if cid:
            entry["correlation_id"] = cid
        for key, value in record.__dict__.items():
            if key in _RESERVED or key.startswith("_"):
                continue
            entry[key] = "[redacted]" if any(s in key.lower() for s in _SECRET_KEYS) else value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def set_events_percent(percent: float) -> None:
    global _events_permyriad
    _events_permyriad = round(max(0.0, min(100.0, percent)) * 100)


def configure_logging(service: str, level: str = "INFO", json_output: bool = True,
                      events_percent: float = 100.0) -> None:
    set_events_percent(events_percent)
    handler = logging.StreamHandler(sys.stdout)
    if json_output:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
