"""What an audit operation refuses, in the business's words; never an HTTP status.

The JSON API and the workbench map these to RFC 9457 problem details in one place
(``services.audit_sampler.problems``), so the service layer knows nothing of HTTP and a new caller (a CLI, a
consumer) gets the same refusals. ``errors`` names the fields at fault as ``{field, message}``.
"""

from __future__ import annotations

from typing import Any


class AuditError(Exception):
    """An operation refused: nothing was changed."""

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors


class NotFound(AuditError):
    """The item, verdict, dispute, request, action or region named does not exist."""


class Forbidden(AuditError):
    """The caller lacks the role or region grant, or separation of duties forbids them this step."""


class Conflict(AuditError):
    """The thing exists but its state does not allow the step (already decided, not claimed, ...)."""


class Invalid(AuditError):
    """The input is wrong; ``title`` says which kind of input (a verdict, a gold item, a change)."""

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None,
                 title: str = "Invalid request") -> None:
        super().__init__(detail, errors=errors)
        self.title = title
