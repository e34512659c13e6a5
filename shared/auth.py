"""Authentication and per-region authorization, the same in every service.

Two kinds of credentials, both verifiable without reading another service's tables:
- **API keys** for upstream systems: ``ck_<key id>_<secret>``; a service stores only the SHA-256 of the
  whole key (keys are 256-bit random, so a slow hash buys nothing) and looks it up by key id.
- **Signed tokens** for people and services: HS256 JWTs signed with ``AUTH_TOKEN_SECRET``, carrying the
  subject, roles, region grants and an expiry.

A principal's regions are explicit codes or ``*`` (all regions, for ops admins and service accounts).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import jwt
import orjson
from fastapi import Request

from shared.http import Problem

ALL_REGIONS = "*"


@dataclass(frozen=True)
class Principal:
    subject: str
    kind: str  # "api_key" | "token"
    roles: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()
    scopes: frozenset[str] = field(default_factory=frozenset)  # event types for API keys; "*" for any

    def can_access(self, region: str) -> bool:
        return ALL_REGIONS in self.regions or region in self.regions

    def require_region(self, region: str) -> None:
        if not self.can_access(region):
            raise Problem(403, "Forbidden", f"no grant for region {region}", errors=[
                {"field": "region", "message": f"principal {self.subject} may not act in region {region}"}])

    def has_role(self, *roles: str) -> bool:
        return bool(self.roles.intersection(roles))

    def require_role(self, *roles: str) -> None:
        if not self.has_role(*roles):
            raise Problem(403, "Forbidden", f"requires one of the roles: {', '.join(roles)}")

    def allowed_regions(self, catalogue_codes: Iterable[str]) -> list[str]:
        return [c for c in catalogue_codes if self.can_access(c)]

    def may_send(self, event_type: str) -> bool:
        return "*" in self.scopes or event_type in self.scopes


class TokenService:
    def __init__(self, secret: str, issuer: str = "compensation-platform") -> None:
        if len(secret) < 16:
            raise ValueError("AUTH_TOKEN_SECRET must be at least 16 characters")
        self._secret = secret
        self._issuer = issuer

    def issue(self, subject: str, roles: Iterable[str], regions: Iterable[str], ttl_seconds: int = 3600,
              audience: str | None = None) -> str:
        now = int(time.time())
        claims: dict[str, object] = {"sub": subject, "roles": sorted(roles), "regions": sorted(regions),
                                     "iat": now, "exp": now + ttl_seconds, "iss": self._issuer}
        if audience:
            claims["aud"] = audience
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        """A bearer token for the APIs. Tokens issued for a narrower audience (workbench session cookies)
        are refused here, so a cookie lifted from a browser cannot be replayed as a bearer token."""
        claims = self._claims(token)
        if "aud" in claims:
            raise Problem(401, "Unauthorized", "invalid token",
                          headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return self._principal(claims)

    def verify_audience(self, token: str, prefix: str) -> tuple[Principal, str]:
        """A token issued for an audience starting with ``prefix``; returns the principal and the rest of
        the audience (the workbench puts its session id there)."""
        claims = self._claims(token)
        audience = claims.get("aud")
        if not isinstance(audience, str) or not audience.startswith(prefix) or audience == prefix:
            raise Problem(401, "Unauthorized", "invalid token",
                          headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return self._principal(claims), audience.removeprefix(prefix)

    def _claims(self, token: str) -> dict[str, object]:
        try:
            # The audience is checked by the two callers above: PyJWT only matches whole audiences.
            claims: dict[str, object] = jwt.decode(
                token, self._secret, algorithms=["HS256"], issuer=self._issuer,
                options={"require": ["exp", "sub", "iss"], "verify_aud": False})
        except jwt.ExpiredSignatureError as exc:
            raise Problem(401, "Unauthorized", "token expired",
                          headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from exc
        except jwt.PyJWTError as exc:
            raise Problem(401, "Unauthorized", "invalid token",
                          headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from exc
        return claims

    @staticmethod
    def _principal(claims: dict[str, object]) -> Principal:
        roles = claims.get("roles", [])
        regions = claims.get("regions", [])
        return Principal(subject=str(claims["sub"]), kind="token",
                         roles=frozenset(map(str, roles if isinstance(roles, list) else [])),
                         regions=frozenset(map(str, regions if isinstance(regions, list) else [])))


# ------------------------------------------------------------------ API keys

API_KEY_PREFIX = "ck"


def generate_api_key() -> tuple[str, str, str]:
    """(key id, full key to hand out once, its hash to store)."""
    key_id = secrets.token_hex(6)
    full = f"{API_KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return key_id, full, hash_api_key(full)


def hash_api_key(full_key: str) -> str:
    return hashlib.sha256(full_key.encode()).hexdigest()


def parse_api_key(full_key: str) -> str | None:
    """The key id of a well-formed key, else None."""
    parts = full_key.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1]


def key_matches(full_key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_api_key(full_key), stored_hash)


ApiKeyLookup = Callable[[str], Awaitable[Principal | None]]


class Authenticator:
    """FastAPI dependency: ``Depends(auth)`` yields the caller's Principal or answers 401."""

    def __init__(self, tokens: TokenService, api_keys: ApiKeyLookup | None = None) -> None:
        self.tokens = tokens
        self.api_keys = api_keys

    async def __call__(self, request: Request) -> Principal:
        principal = await self.authenticate(request)
        if principal is None:
            raise Problem(401, "Unauthorized", "missing or invalid credentials",
                          headers={"WWW-Authenticate": 'Bearer realm="compensation-platform"'})
        request.state.principal = principal
        return principal

    async def authenticate(self, request: Request) -> Principal | None:
        authz = request.headers.get("authorization", "")
        if authz.lower().startswith("bearer "):
            return self.tokens.verify(authz[7:].strip())
        api_key = request.headers.get("x-api-key")
        if api_key and self.api_keys is not None:
            return await self.api_keys(api_key)
        return None


class VerifiedTokens(TokenService):
    """``TokenService`` that remembers the tokens it verified until they expire.

    Verifying a bearer token (HMAC-SHA256 plus PyJWT's claim checks) was about a tenth of a single-event
    request's CPU for platform services that post with tokens, and such a caller sends the same token
    for an hour. A token is looked up by its exact text, so only a byte-identical token ever skips the
    signature check, and only while ``now < exp``: the answer is the one a fresh verification would
    give (tokens cannot be revoked; their expiry is the only thing that changes). Refused tokens are not
    remembered. The cache is cleared when it holds ``max_size`` tokens, which keeps memory flat.
    """

    def __init__(self, secret: str, issuer: str, *, max_size: int = 10_000,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(secret, issuer)
        self._max_size = max_size
        self._clock = clock
        self._verified: dict[str, tuple[float, Principal]] = {}

    def verify(self, token: str) -> Principal:
        hit = self._verified.get(token)
        if hit is not None and self._clock() < hit[0]:
            return hit[1]
        principal = super().verify(token)
        if len(self._verified) >= self._max_size:
            self._verified.clear()
        self._verified[token] = (_expiry(token), principal)
        return principal


def _expiry(token: str) -> float:
    """``exp`` of a token whose signature and claims were just verified (PyJWT requires ``exp``)."""
    payload = token.split(".")[1]
    return float(orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])
