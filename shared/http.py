"""RFC 9457 problem details for every service, request body limits, and correlation ids."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logging import correlation_id, log_event
from shared.metrics import HTTP_REQUESTS, HTTP_SECONDS
from shared.regions import catalogue

PROBLEM_JSON = "application/problem+json"
CORRELATION_HEADER = "X-Correlation-Id"
# What a correlation id from a client may be: it is copied into events (envelope and Kafka header), logs
# and the answer, so visible ASCII only, at most 128 characters; empty means none.
CORRELATION_ID_PATTERN = r"^[!-~]{0,128}$"
_CORRELATION_ID = re.compile(CORRELATION_ID_PATTERN)
_log = logging.getLogger("shared.http")
_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})  # polled every few seconds: not worth a line each


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem+json document."""

    def __init__(self, status: int, title: str, detail: str | None = None, *,
                 errors: list[dict[str, Any]] | None = None, type_: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.errors, self.type, self.headers, self.extra = errors, type_, headers, extra


def problem_body(status: int, title: str, detail: str | None = None, *, instance: str | None = None,
                 errors: list[dict[str, Any]] | None = None, type_: str | None = None,
                 **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type_ or "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    body.update(extra)
    return body


def problem_response(status: int, title: str, detail: str | None = None, *,
                     headers: dict[str, str] | None = None, **kw: Any) -> JSONResponse:
    return JSONResponse(problem_body(status, title, detail, **kw), status_code=status,
                        media_type=PROBLEM_JSON, headers=headers)


def field_errors(errors: Any) -> list[dict[str, Any]]:
    """Pydantic/FastAPI errors as [{"field": "body.items.0.amount", "message": ...}]."""
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        out.append({"field": ".".join(loc), "message": err.get("msg", "invalid")})
    return out


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail, errors=exc.errors, type_=exc.type,
                                headers=exc.headers, instance=request.url.path, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(exc.errors())
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem_response(422, "Request validation failed", detail, errors=errors,
                                instance=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405 and (documented := _allowed_methods(request)):
            # Starlette names the methods of the first route on the path only; a path served by several
            # routes (GET and PUT of one resource) allows all of theirs (RFC 9110).
            headers = {**(headers or {}), "Allow": ", ".join(documented)}
        return problem_response(exc.status_code, _TITLES.get(exc.status_code, "Error"), str(exc.detail),
                                headers=headers, instance=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger("http").exception("unhandled error", extra={"path": request.url.path})
        return problem_response(500, "Internal Server Error", "unexpected error; see logs",
                                instance=request.url.path)


def is_json_media_type(content_type: str | None) -> bool:
    """``application/json`` or a ``+json`` type, parameters (``; charset=utf-8``) aside."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def require_json_body(request: Request, body: bytes) -> None:
    """415 for a body that is not declared JSON (an empty body is left to the body's own validation)."""
    content_type = request.headers.get("content-type")
    if body and not is_json_media_type(content_type):
        raise Problem(415, "Unsupported Media Type",
                      f"the body must be sent as application/json, not {content_type or 'without a Content-Type'}",
                      errors=[{"field": "header.Content-Type", "message": "must be application/json"}])


class JsonBodyRoute(APIRoute):
    """A route whose JSON body is refused with 415 unless it is sent as JSON (FastAPI would otherwise try
    to parse any body as JSON, or report a media type problem as a 422 about the body's shape)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            require_json_body(request, await request.body())
            return await handler(request)

        return checked


def _allowed_methods(request: Request) -> list[str]:
    """The methods the API document gives the request's path (HEAD with GET): what a 405 must list."""
    app = request.app
    table = getattr(app.state, "allowed_methods", None)
    if table is None:
        table = app.state.allowed_methods = [
            (re.compile("^" + re.sub(r"\\{[^/}]+\\}", "[^/]+", re.escape(path)) + "$"),
             {m.upper() for m in ops} | ({"HEAD"} if "get" in ops else set()))
            for path, ops in app.openapi().get("paths", {}).items()]
    methods: set[str] = set()
    for pattern, allowed in table:
        if pattern.match(request.url.path):
            methods |= allowed
    return sorted(methods)


_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type",
           422: "Unprocessable Content", 429: "Too Many Requests", 503: "Service Unavailable"}


class BodyLimitMiddleware:
    """Answer 413 as soon as a body is larger than ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = True
                if too_big:
                    await self._reject(scope, send)
                    return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        response = problem_response(413, "Content Too Large",
                                    f"request body exceeds {self.max_bytes} bytes", instance=scope.get("path"))
        await response(scope, _noop_receive, send)


class _TooLarge(Exception):
    pass


async def _noop_receive() -> Message:
    return {"type": "http.disconnect"}


async def _bad_correlation_id(scope: Scope, send: Send) -> None:
    message = "at most 128 visible ASCII characters (no spaces or control characters)"
    response = problem_response(400, "Bad Request", f"{CORRELATION_HEADER}: {message}",
                                errors=[{"field": f"header.{CORRELATION_HEADER}", "message": message}],
                                instance=scope.get("path"))
    await response(scope, _noop_receive, send)


class RequestContextMiddleware:
    """Correlation id from ``X-Correlation-Id`` (or a new one) for logs and the response; HTTP metrics."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cid = None
        for name, value in scope.get("headers", []):
            if name == b"x-correlation-id":
                cid = value.decode("latin-1")
        if cid is not None and not _CORRELATION_ID.match(cid):
            await _bad_correlation_id(scope, send)
            return
        cid = cid or str(uuid.uuid4())
        token = correlation_id.set(cid)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-correlation-id", cid.encode("latin-1")))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            HTTP_REQUESTS.labels(self.service, scope["method"], path, str(status)).inc()
            elapsed = time.perf_counter() - started
            HTTP_SECONDS.labels(self.service, scope["method"], path).observe(elapsed)
            if path not in _PROBES:
                log_event(_log, "http request", cid, method=scope["method"], path=path, status=status,
                          duration_ms=round(elapsed * 1000, 1))
            correlation_id.reset(token)


# ------------------------------------------------------------------ OpenAPI: what the answers really are


class FieldError(BaseModel):
    field: str = Field(description="Where: body.<path>, query.<name>, path.<name>, header.<name>, or the "
                                   "item-relative path in a batch result.")
    message: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details: every error answer of the platform."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None


PROBLEM_REF = {"$ref": "#/components/schemas/ProblemDetails"}

_DESCRIPTIONS = {
    400: "Malformed request (e.g. the body is not JSON, or a bad X-Correlation-Id header).",
    401: "Missing, invalid or expired credentials.",
    403: "The caller lacks the role, or the grant for the region.",
    404: "Not found (or not in the caller's regions).",
    409: "Conflicts with the current state.",
    413: "The body is larger than the limit.",
    415: "The body is not sent as application/json.",
    422: "Invalid request; ``errors`` names each bad field.",
    429: "Rate limit exceeded; retry after Retry-After seconds.",
    503: "Temporarily unavailable; retry after Retry-After seconds.",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}


def problem_doc(status: int, description: str | None = None) -> dict[str, Any]:
    """The OpenAPI response of an error answer: problem+json (with Retry-After for 429 and 503)."""
    doc: dict[str, Any] = {"description": description or _DESCRIPTIONS.get(status, "Error."),
                           "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}}}
    if status in (429, 503):
        doc["headers"] = dict(_RETRY_AFTER)
    return doc


def problems(*statuses: int, described: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route: its error statuses as problem documents; ``described`` gives a status a
    route-specific description."""
    out: dict[int | str, dict[str, Any]] = {s: problem_doc(s) for s in statuses}
    for status, text in (described or {}).items():
        out[status] = problem_doc(status, text)
    return out


def csv_or_json(description: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entry of a 200 that is JSON or, with ``format=csv``, CSV."""
    return {200: {"description": description, "content": {
        "application/json": {"schema": {"type": "object", "additionalProperties": True}},
        "text/csv": {"schema": {"type": "string"}}}}}


BEARER_SCHEME = {"Bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                            "description": "Platform token (`python -m shared token`): roles and region grants."}}


def document_api(app: FastAPI, *, security_schemes: dict[str, Any] | None = None,
                 security: list[dict[str, list[str]]] | None = None, secured_prefix: str = "/v1/") -> None:
    """Make the app's OpenAPI document say what its answers are.

    Every error answer is problem+json (FastAPI documents its 422 as application/json); operations under
    ``secured_prefix`` carry ``security`` and their 401 and 403; an operation with a body documents 413
    (body limit) and, for a JSON body, 415; every operation takes an optional X-Correlation-Id (400 when
    it is malformed) and every answer carries one. Routes document their own other statuses
    (``responses=problems(404, 409)``).
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _finish(schema, security_schemes or BEARER_SCHEME, security or [{"Bearer": []}], secured_prefix)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _finish(schema: dict[str, Any], schemes: dict[str, Any], security: list[dict[str, list[str]]],
            secured_prefix: str) -> None:
    parts = schema.setdefault("components", {})
    models = parts.setdefault("schemas", {})
    for model in (FieldError, ProblemDetails):
        found = model.model_json_schema(ref_template="#/components/schemas/{model}")
        models.update(found.pop("$defs", {}))
        models[model.__name__] = found
    for unused in ("HTTPValidationError", "ValidationError"):
        models.pop(unused, None)
    # Regions are data: a running service's document lists its catalogue's codes wherever a region is
    # named (a parameter or a body field), and code refuses any other with a 4xx naming it.
    codes = catalogue().codes()
    for model in models.values():
        region = model.get("properties", {}).get("region")
        if region is not None and region.get("type") == "string":
            region["enum"] = codes
    parts.setdefault("securitySchemes", {}).update(schemes)
    correlation_param = {
        "name": CORRELATION_HEADER, "in": "header", "required": False,
        "description": "Your id for this request, echoed in the answer and carried by the events it causes.",
        "schema": {"type": "string", "maxLength": 128, "pattern": CORRELATION_ID_PATTERN}}
    correlation_out = {CORRELATION_HEADER: {"description": "The request's correlation id (yours, or a new one).",
                                            "schema": {"type": "string"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            if method not in ("get", "put", "post", "delete", "patch"):
                continue
            responses: dict[str, Any] = op.setdefault("responses", {})
            wanted: set[int] = {400}
            body = op.get("requestBody")
            if body is not None:
                wanted.add(413)
                if any(is_json_media_type(t) for t in body.get("content", {})):
                    wanted.add(415)
            if path.startswith(secured_prefix):
                op.setdefault("security", security)
                wanted |= {401, 403}
            for code in sorted(wanted):
                responses.setdefault(str(code), problem_doc(code))
            for status, response in responses.items():
                if status[:1] in ("4", "5"):
                    response["content"] = {PROBLEM_JSON: {"schema": PROBLEM_REF}}
                response.setdefault("headers", {}).update(correlation_out)
            params = op.setdefault("parameters", [])
            for param in params:
                if param.get("name") == "region":
                    for branch in [param["schema"], *param["schema"].get("anyOf", [])]:
                        if branch.get("type") == "string":
                            branch["enum"] = codes
            if not any(p.get("name") == CORRELATION_HEADER for p in params):
                params.append(correlation_param)
