"""Audit refusals as RFC 9457 problem details: the one place the JSON API and the workbench turn an
``operations.errors.AuditError`` into an HTTP status (the service layer never names one).

``AuditErrorRoute`` is a route-class mix-in: put it after the route class that renders problems (the JSON
route, or the workbench's HTML page route) so the error arrives there as a ``Problem``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from services.audit_sampler.operations.errors import AuditError, Conflict, Forbidden, Invalid, NotFound
from shared.http import Problem

_STATUS: tuple[tuple[type[AuditError], int, str], ...] = (
    (NotFound, 404, "Not Found"),
    (Forbidden, 403, "Forbidden"),
    (Conflict, 409, "Conflict"),
    (Invalid, 422, "Invalid request"),
)


def problem_for(exc: AuditError) -> Problem:
    for kind, status, title in _STATUS:
        if isinstance(exc, kind):
            if isinstance(exc, Invalid):
                title = exc.title
            return Problem(status, title, exc.detail, errors=exc.errors)
    # A new kind of refusal without a mapping is a bug here, not the caller's fault: answer 500 loudly.
    raise TypeError(f"no problem mapping for {type(exc).__name__}") from exc


def as_problem(exc: Problem | AuditError) -> Problem:
    """For a page that shows 422s next to its form: a refusal from the form's own checks or the operation."""
    return exc if isinstance(exc, Problem) else problem_for(exc)


class AuditErrorRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def mapped(request: Request) -> Response:
            try:
                return await handler(request)
            except AuditError as exc:
                raise problem_for(exc) from exc

        return mapped
