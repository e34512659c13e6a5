"""``python -m services.audit_sampler serve | migrate | policy validate FILE... | users ...``"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastapi import FastAPI

from services.audit_sampler.app import build_app
from services.audit_sampler.config import Settings
from services.audit_sampler.domain.authority import LimitsError, load_limits_file
from services.audit_sampler.domain.policy import PolicyError, load_policy_file
from services.audit_sampler.web import cli as users_cli
from shared.config import ServiceSettings
from shared.service import run_cli

MIGRATIONS = Path(__file__).with_name("migrations")


def validate_policies(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            policy = load_policy_file(path)
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            failed += 1
        else:
            print(f"{path}: ok (region {policy.region}, mode {policy.mode.value}, version {policy.version})")
    return 1 if failed else 0


def validate_limits(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            limits = load_limits_file(path)
        except LimitsError as exc:
            print(exc, file=sys.stderr)
            failed += 1
        else:
            print(f"{path}: ok (region {limits.region}, {len(limits.rules)} rules, version {limits.version})")
    return 1 if failed else 0


def extra(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    limits = sub.add_parser("limits", help="agent authority limit files")
    limits_sub = limits.add_subparsers(dest="limits_command", required=True)
    check = limits_sub.add_parser("validate", help="check authority limit YAML files; exit 1 if any is invalid")
    check.add_argument("files", nargs="+", type=Path)
    check.set_defaults(handler=validate_limits)
    policy = sub.add_parser("policy", help="sampling policy files")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    validate = policy_sub.add_parser("validate", help="check policy YAML files; exit 1 if any is invalid")
    validate.add_argument("files", nargs="+", type=Path)
    validate.set_defaults(handler=validate_policies)
    users_cli.register(sub)


def build_or_explain(settings: ServiceSettings) -> FastAPI:
    """The app, or a readable exit when a policy file is broken (no traceback for an operator's typo)."""
    try:
        return build_app(settings)
    except (PolicyError, LimitsError) as exc:
        print(f"audit_sampler: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def main(argv: list[str] | None = None) -> int:
    return run_cli(name="audit_sampler", settings_factory=Settings, app_factory=build_or_explain,
                   migrations_dir=MIGRATIONS, schema="audit_sampler", extra=extra, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
