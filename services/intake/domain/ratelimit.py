"""Token bucket per API key, kept in process: the limit holds per replica, not across replicas."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    rate: float
    tokens: float
    updated: float


class RateLimiter:
    """``take(key, rate)`` spends one token; the bucket holds one second's worth (the burst allowance)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, rate_per_second: float) -> float:
        """0.0 when allowed, else the seconds to wait before the next request can pass."""
        if rate_per_second <= 0:
            return math.inf
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate_per_second:
            if len(self._buckets) >= self._max_keys:
                self._buckets.clear()
            bucket = self._buckets[key] = _Bucket(rate_per_second, rate_per_second, now)
        else:
            bucket.tokens = min(bucket.rate, bucket.tokens + (now - bucket.updated) * bucket.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / bucket.rate


def retry_after_header(wait_seconds: float) -> str:
    """Retry-After is whole seconds; never 0, or clients would hammer straight back."""
    return str(max(1, math.ceil(wait_seconds)))
