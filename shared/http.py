"""RFC 9457 problem details for every service, request body limits, and correlation ids."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logging import correlation_id
from shared.metrics import HTTP_REQUESTS, HTTP_SECONDS

PROBLEM_JSON = "application/problem+json"


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
        return problem_response(exc.status_code, _TITLES.get(exc.status_code, "Error"), str(exc.detail),
                                headers=getattr(exc, "headers", None), instance=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger("http").exception("unhandled error", extra={"path": request.url.path})
        return problem_response(500, "Internal Server Error", "unexpected error; see logs",
                                instance=request.url.path)


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
                cid = value.decode("latin-1")[:128]
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
            HTTP_SECONDS.labels(self.service, scope["method"], path).observe(time.perf_counter() - started)
            correlation_id.reset(token)
