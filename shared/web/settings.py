"""What the shared sign-in needs to know of a service's settings. Each service declares these fields in
its own settings class under its own prefix (``AUDIT_SAMPLER_SESSION_TTL_SECONDS``,
``INSIGHTS_SESSION_TTL_SECONDS``, ...), so the README names every variable and one service's values never
leak into another's."""

from __future__ import annotations

from typing import Protocol


class SignInSettings(Protocol):
    @property
    def session_ttl_seconds(self) -> int: ...  # a session ends this long after sign-in
    @property
    def cookie_secure(self) -> bool: ...  # cookies only over HTTPS
    @property
    def trusted_header_auth(self) -> bool: ...  # an identity proxy names the user
    @property
    def trusted_user_header(self) -> str: ...
    @property
    def signin_max_failures(self) -> int: ...  # one account from one client
    @property
    def signin_client_max_failures(self) -> int: ...  # one unknown client across accounts
    @property
    def signin_account_max_failures(self) -> int: ...  # one account from unknown clients
    @property
    def signin_lockout_seconds(self) -> int: ...
    @property
    def device_cookie_days(self) -> int: ...
