"""Passwords, session ids, CSRF tokens and the user rules of the services' signed-in pages (the audit
workbench, the insights dashboard). No I/O.

Passwords are hashed with scrypt (RFC 7914, ``hashlib.scrypt``) and a random 16-byte salt per user; the
stored form names its parameters (``scrypt$n$r$p$salt$hash``) so they can be raised later without
invalidating existing hashes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from shared.regions import catalogue

USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.@-]{1,63}$")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # scrypt cost does not depend on length, but nobody needs more

# 32 MiB and ~0.2 s per hash on a small machine. OWASP suggests N=2^17 where sign-in latency allows; the
# stored form carries the parameters, so raising N later keeps every existing hash valid.
_N, _R, _P = 2**15, 8, 1


class UserError(ValueError):
    """Invalid user data; ``errors`` lists (field, message)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))


def hash_password(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)
    return "$".join(["scrypt", str(n), str(r), str(p), _b64(salt), _b64(digest)])


def verify_password(password: str, stored: str | None) -> bool:
    if not stored or len(password) > MAX_PASSWORD:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                                maxmem=256 * 1024 * 1024, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@functools.cache
def dummy_hash() -> str:
    """A hash to verify against when the user does not exist, so a wrong username costs as much time as a
    wrong password and sign-in timing does not reveal which usernames exist."""
    return hash_password(secrets.token_urlsafe(16))


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def new_device_id() -> str:
    return secrets.token_urlsafe(16)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str | None) -> bool:
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class NewUser:
    username: str
    roles: tuple[str, ...]
    regions: tuple[str, ...]


def validate_user(username: str, roles: list[str], regions: list[str], *, allowed_roles: Sequence[str],
                  pages: str) -> NewUser:
    """Check a user's name, roles (``allowed_roles``, the roles of these ``pages``) and region grants
    (catalogue codes or ``*``)."""
    errors: list[tuple[str, str]] = []
    if not USERNAME.match(username):
        errors.append(("username", "2-64 characters: lower-case letters, digits, _ . @ -, starting with a "
                                   "letter or digit"))
    roles = sorted({r.strip() for r in roles if r.strip()})
    if not roles:
        errors.append(("roles", "at least one role"))
    for role in roles:
        if role not in allowed_roles:
            errors.append(("roles", f"unknown role {role!r} ({pages} roles: {', '.join(allowed_roles)})"))
    regions = sorted({r.strip().upper() for r in regions if r.strip()})
    if not regions:
        errors.append(("regions", "at least one region code, or * for all"))
    known = catalogue()
    for code in regions:
        if code != "*" and code not in known:
            errors.append(("regions", f"unknown region {code!r} (known: {', '.join(known.codes())})"))
    if errors:
        raise UserError(errors)
    return NewUser(username, tuple(roles), tuple(regions))


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError([("password", f"at least {MIN_PASSWORD} characters")])
    if len(password) > MAX_PASSWORD:
        raise UserError([("password", f"at most {MAX_PASSWORD} characters")])
