"""Which failures the consumer runner retries (never dead-letters) and which it treats as poison.

The exceptions are asyncpg's own classes, translated and wrapped by SQLAlchemy's asyncpg dialect exactly
as a failing statement is: ``DBAPIError(orig=<dialect Error with .sqlstate>)`` raised from the asyncpg
error. SQLAlchemy maps most server errors to the plain ``DBAPIError``, so the class says nothing and only
the SQLSTATE tells a deadlock from a constraint violation.
"""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection, AsyncAdapt_asyncpg_dbapi
from sqlalchemy.exc import DBAPIError

from shared.kafka.consumer import PermanentError, is_transient, sqlstate_of

DBAPI = AsyncAdapt_asyncpg_dbapi(asyncpg)


def wrapped(error: Exception) -> DBAPIError:
    """What ``conn.execute`` raises when asyncpg raised ``error``."""
    try:
        AsyncAdapt_asyncpg_connection._handle_exception_no_connection(DBAPI, error)
    except Exception as translated:
        try:
            raise DBAPIError.instance("UPDATE t SET n = n + 1", {}, translated, DBAPI.Error) from translated
        except DBAPIError as exc:
            return exc
    raise AssertionError("the dialect did not translate the error")


TRANSIENT = [
    (asyncpg.exceptions.DeadlockDetectedError, "40P01"),
    (asyncpg.exceptions.SerializationError, "40001"),
    (asyncpg.exceptions.LockNotAvailableError, "55P03"),
    (asyncpg.exceptions.AdminShutdownError, "57P01"),
    (asyncpg.exceptions.CrashShutdownError, "57P02"),
    (asyncpg.exceptions.CannotConnectNowError, "57P03"),
    (asyncpg.exceptions.TooManyConnectionsError, "53300"),
    (asyncpg.exceptions.ConnectionFailureError, "08006"),
    (asyncpg.exceptions.ConnectionRejectionError, "08004"),
]


@pytest.mark.parametrize(("cls", "state"), TRANSIENT, ids=[c.__name__ for c, _ in TRANSIENT])
def test_wrapped_retryable_postgres_errors_are_transient(cls: type[Exception], state: str) -> None:
    exc = wrapped(cls("boom"))
    assert type(exc) is DBAPIError or isinstance(exc, DBAPIError)
    assert sqlstate_of(exc) == state
    assert is_transient(exc)


def test_the_plain_dbapierror_wrapper_is_what_sqlalchemy_raises_for_a_deadlock() -> None:
    # The premise of SQLSTATE classification: no OperationalError, no asyncpg class name at the top.
    exc = wrapped(asyncpg.exceptions.DeadlockDetectedError("deadlock detected"))
    assert type(exc) is DBAPIError
    assert exc.orig is not None and getattr(exc.orig, "sqlstate", None) == "40P01"
    assert isinstance(exc.__cause__, type(exc.orig))
    assert isinstance(exc.orig.__cause__, asyncpg.exceptions.DeadlockDetectedError)


def test_sqlstate_found_through_cause_and_context_chains() -> None:
    inner = wrapped(asyncpg.exceptions.SerializationError("could not serialize access"))
    try:
        try:
            raise inner
        except DBAPIError as exc:
            raise RuntimeError("handler gave up") from exc
    except RuntimeError as outer:
        assert is_transient(outer)
    try:
        try:
            raise inner
        except DBAPIError:
            raise ValueError("while handling")  # implicit __context__, on purpose
    except ValueError as outer:
        assert is_transient(outer)
    # The asyncpg error itself, unwrapped, carries .sqlstate too.
    assert is_transient(asyncpg.exceptions.DeadlockDetectedError("x"))


@pytest.mark.parametrize("error", [
    asyncpg.exceptions.UniqueViolationError("duplicate key"),
    asyncpg.exceptions.RaiseError("raised by a trigger"),
    asyncpg.exceptions.DataError("invalid input syntax"),
    asyncpg.exceptions.UndefinedTableError("relation does not exist"),
], ids=lambda e: type(e).__name__)
def test_wrapped_data_and_logic_errors_are_not_transient(error: Exception) -> None:
    assert not is_transient(wrapped(error))


def test_plain_bugs_are_not_transient_and_permanent_error_always_wins() -> None:
    assert not is_transient(ValueError("bad amount"))
    assert not is_transient(KeyError("missing"))
    try:
        try:
            raise wrapped(asyncpg.exceptions.DeadlockDetectedError("x"))
        except DBAPIError as exc:
            raise PermanentError("order refers to nothing") from exc
    except PermanentError as permanent:
        assert not is_transient(permanent)


def test_connection_level_failures_stay_transient() -> None:
    assert is_transient(ConnectionResetError("peer reset"))
    assert is_transient(TimeoutError())
    assert is_transient(wrapped(asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")))
    assert is_transient(wrapped(asyncpg.exceptions.InterfaceError("connection is closed")))


def test_an_error_raised_from_none_is_judged_on_its_own() -> None:
    # A handler that turns a timeout into "this can never apply" must not be retried forever.
    def handler() -> None:
        try:
            raise TimeoutError("upstream lookup timed out")
        except TimeoutError:
            raise ValueError("order O-1 does not exist") from None

    with pytest.raises(ValueError) as caught:
        handler()
    assert not is_transient(caught.value)

    def implicit() -> None:
        try:
            raise TimeoutError("upstream lookup timed out")
        except TimeoutError:
            raise ValueError("while retrying")  # the implicit context is the point here

    with pytest.raises(ValueError) as caught:
        implicit()
    assert is_transient(caught.value)  # raised while handling a timeout, without disowning it
