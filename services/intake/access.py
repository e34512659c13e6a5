"""Who may post: API keys (cached lookups, hashed, scoped) and bearer tokens; per-key rate limits."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.intake import persistence
from services.intake.domain.keys import ANY, ApiKey
from services.intake.domain.ratelimit import RateLimiter, retry_after_header
from services.intake.metrics import REQUESTS_REFUSED
from shared.auth import ALL_REGIONS, Authenticator, Principal, TokenService, key_matches, parse_api_key
from shared.http import Problem

# Bearer tokens with these roles may post any event type (platform services, operators replaying).
TOKEN_ROLES = ("service", "ops_admin")


class ApiKeys:
    """Key records by key id, cached for ``ttl`` seconds (so a revocation shows within ``ttl``).

    Unknown ids are cached too, so junk keys cannot turn every request into a database query; the cache
    is cleared when it reaches ``max_size``, which keeps memory flat.
    """

    def __init__(self, engine: AsyncEngine, ttl: float, max_size: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._ttl = ttl
        self._max_size = max_size
        self._clock = clock
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def get(self, key_id: str) -> ApiKey | None:
        now = self._clock()
        hit = self._cache.get(key_id)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        try:
            async with self._engine.connect() as conn:
                record = await persistence.get_api_key(conn, key_id)
        except (DBAPIError, OSError, TimeoutError) as exc:
            raise Problem(503, "Service Unavailable", "credentials cannot be checked right now",
                          headers={"Retry-After": "5"}) from exc
        if len(self._cache) >= self._max_size:
            self._cache.clear()
        self._cache[key_id] = (now, record)
        return record

    async def principal(self, full_key: str) -> Principal | None:
        key_id = parse_api_key(full_key)
        if key_id is None:
            return None
        record = await self.get(key_id)
        if record is None or not record.active or not key_matches(full_key, record.key_hash):
            return None
        regions = frozenset({ALL_REGIONS}) if ANY in record.regions else record.regions
        return Principal(subject=record.system_name, kind="api_key", regions=regions,
                         scopes=record.event_types)


class Access:
    """Per event type: authenticate, rate-limit, and check the credential's event type scope."""

    def __init__(self, tokens: TokenService, keys: ApiKeys, limiter: RateLimiter | None = None) -> None:
        self.keys = keys
        self.limiter = limiter or RateLimiter()
        self.authenticator = Authenticator(tokens, keys.principal)

    def for_event_type(self, event_type: str) -> Callable[[Request], Awaitable[Principal]]:
        """The caller of a request, authenticated, rate-limited and allowed to send ``event_type``."""

        async def dependency(request: Request) -> Principal:
            try:
                if "x-api-key" in request.headers and "authorization" in request.headers:
                    # One credential per request: a bad key next to a good token must not pass unnoticed.
                    raise Problem(401, "Unauthorized", "send either X-API-Key or a bearer token, not both",
                                  headers={"WWW-Authenticate": 'Bearer realm="compensation-platform"'})
                principal = await self.authenticator(request)
            except Problem:
                REQUESTS_REFUSED.labels(event_type, "unauthorized").inc()
                raise
            if principal.kind == "api_key":
                await self._rate_limit(request, event_type)
                allowed = principal.may_send(event_type)
            else:
                allowed = principal.has_role(*TOKEN_ROLES)
            if not allowed:
                REQUESTS_REFUSED.labels(event_type, "forbidden_event_type").inc()
                raise Problem(403, "Forbidden", f"{principal.subject} may not send {event_type} events",
                              errors=[{"field": "event_type", "message": f"{event_type} is outside the "
                                       "credential's scope"}])
            return principal

        return dependency

    async def _rate_limit(self, request: Request, event_type: str) -> None:
        key_id = parse_api_key(request.headers.get("x-api-key", "")) or ""
        record = await self.keys.get(key_id)
        if record is None:
            return
        wait = self.limiter.take(key_id, record.rate_limit_per_second)
        if wait > 0:
            REQUESTS_REFUSED.labels(event_type, "rate_limited").inc()
            raise Problem(429, "Too Many Requests",
                          f"rate limit of {record.rate_limit_per_second} requests/s for this key exceeded",
                          headers={"Retry-After": retry_after_header(wait)})
