"""Startup configuration: a stack never runs on a guessable token secret, and errors never echo secrets."""

import pytest
from pydantic import ValidationError

from shared.config import CommonSettings

GOOD_SECRET = "k" * 40


def test_missing_token_secret_stops_startup_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTH_TOKEN_SECRET", raising=False)
    with pytest.raises(ValidationError) as exc:
        CommonSettings()
    assert "auth_token_secret" in str(exc.value)


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
    assert settings.auth_token_secret.get_secret_value() == GOOD_SECRET


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
