"""Startup configuration: a stack never runs on a guessable token secret, and errors never echo secrets."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.config import CommonSettings, MissingSetting

REPO = Path(__file__).resolve().parents[3]

GOOD_SECRET = "k" * 40


def test_missing_token_secret_stops_what_signs_tokens_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTH_TOKEN_SECRET", raising=False)
    with pytest.raises(MissingSetting) as exc:
        CommonSettings().require_token_secret()
    assert str(exc.value) == "AUTH_TOKEN_SECRET: required, not set"


def test_operator_commands_run_without_the_token_secret(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from services.auto_comp.__main__ import main as auto_comp

    monkeypatch.delenv("AUTH_TOKEN_SECRET", raising=False)
    assert auto_comp(["validate-strategies", str(REPO / "services/auto_comp/strategies")]) == 0
    assert "AUTH_TOKEN_SECRET" not in capsys.readouterr().err


def test_token_command_without_a_secret_names_it(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from shared.__main__ import main as shared_cli

    monkeypatch.delenv("AUTH_TOKEN_SECRET", raising=False)
    assert shared_cli(["token", "--subject", "alice", "--regions", "SG"]) == 2
    assert "AUTH_TOKEN_SECRET: required, not set" in capsys.readouterr().err


def test_a_relative_socket_folder_is_read_from_the_working_directory(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    url = CommonSettings().database_url  # the local stack's default: ?host=.local/pg
    assert url == f"postgresql+asyncpg://postgres:@/postgres?host={tmp_path.resolve()}/.local/pg"
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:pw@db.internal:5432/comp?sslmode=require")
    assert CommonSettings().database_url == "postgresql+asyncpg://app:pw@db.internal:5432/comp?sslmode=require"
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@/comp?host=/run/postgresql")
    assert CommonSettings().database_url == "postgresql+asyncpg://app@/comp?host=/run/postgresql"


@pytest.mark.parametrize("secret", ["dev-only-insecure-token-secret-change-me", "short-but-not-32-chars"])
def test_published_or_short_secrets_are_refused(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv("AUTH_TOKEN_SECRET", secret)
    with pytest.raises(ValidationError) as exc:
        CommonSettings()
    assert "AUTH_TOKEN_SECRET" in str(exc.value)
    assert secret not in str(exc.value)


def test_errors_do_not_echo_the_database_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_TOKEN_SECRET", GOOD_SECRET)
    monkeypatch.setenv("DATABASE_URL", "mysql://app:hunter2-very-secret@db/app")
    with pytest.raises(ValidationError) as exc:
        CommonSettings()
    assert "DATABASE_URL" in str(exc.value)
    assert "hunter2" not in str(exc.value)


def test_secret_is_masked_in_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_TOKEN_SECRET", GOOD_SECRET)
    settings = CommonSettings()
    assert GOOD_SECRET not in repr(settings) and GOOD_SECRET not in str(settings.model_dump())
    assert settings.require_token_secret() == GOOD_SECRET


def test_service_startup_names_each_bad_variable_without_values(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from services.intake.__main__ import main

    monkeypatch.delenv("AUTH_TOKEN_SECRET", raising=False)
    monkeypatch.setenv("DATABASE_URL", "mysql://app:hunter2-very-secret@db/app")
    monkeypatch.setenv("INTAKE_PORT", "not-a-port")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "AUTH_TOKEN_SECRET: required, not set" in err
    assert "INTAKE_PORT:" in err and "DATABASE_URL:" in err
    assert "hunter2" not in err and "not-a-port" not in err
