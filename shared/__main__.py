"""Operator commands of the shared toolkit.

``python -m shared token --subject alice --roles auditor,lead --regions SG,MY [--ttl 3600]`` prints a
signed bearer token (AUTH_TOKEN_SECRET) for people and services calling the platform's APIs.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from shared.auth import TokenService
from shared.config import CommonSettings, MissingSetting
from shared.service import describe_config_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared")
    sub = parser.add_subparsers(dest="command", required=True)
    tok = sub.add_parser("token", help="print a signed bearer token")
    tok.add_argument("--subject", required=True)
    tok.add_argument("--roles", default="", help="comma-separated roles")
    tok.add_argument("--regions", required=True, help="comma-separated region codes, or *")
    tok.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    args = parser.parse_args(argv)
    try:
        settings = CommonSettings()
        secret = settings.require_token_secret()
    except (ValidationError, MissingSetting) as exc:
        detail = describe_config_errors(exc) if isinstance(exc, ValidationError) else f"  {exc}"
        print(f"shared token: invalid configuration:\n{detail}", file=sys.stderr)
        return 2
    service = TokenService(secret, settings.auth_token_issuer)
    roles = [r for r in args.roles.split(",") if r]
    regions = [r for r in args.regions.split(",") if r]
    print(service.issue(args.subject, roles, regions, ttl_seconds=args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
