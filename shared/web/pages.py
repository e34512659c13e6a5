"""The page plumbing every signed-in site shares: security headers, the route class that turns sign-in
redirects and problems into HTML, and the sign-in / sign-out routes (double-submit CSRF on the sign-in form,
the session and known-device cookies, safe ``next`` targets).

A site supplies its ``SessionAuth``, its URL prefix, its landing page and a ``render`` function over its own
templates (each has a ``signin.html`` taking ``next``, ``csrf``, ``error`` and ``trusted``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from starlette.datastructures import FormData

from shared.http import Problem, field_errors
from shared.web.auth import PendingCookie, SessionAuth, SignInFailed, SignInRequired
from shared.web.security import new_csrf_token, same_token

# Pages show business data: never cache them, never frame them, nothing but this origin's own assets (no
# scripts at all: charts are inline SVG styled by the site's stylesheet).
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": ("default-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                                "frame-ancestors 'none'"),
}
SIGNIN_FORM_SECONDS = 1800


class Render(Protocol):
    def __call__(self, request: Request, template: str, status: int = 200, **context: Any) -> Response: ...


class ErrorPage(Protocol):
    def __call__(self, request: Request, status: int, title: str, detail: str | None,
                 errors: list[dict[str, Any]] | None = None) -> Response: ...


def secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response


def safe_next(target: str | None, prefix: str, default: str) -> str:
    """Only a path of this site: never an absolute or scheme-relative URL (open redirect)."""
    if target and target.startswith(prefix + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return default


def form_text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def set_session_cookie(auth: SessionAuth, response: Response, cookie: PendingCookie) -> None:
    response.set_cookie(auth.site.session_cookie, cookie.value, max_age=cookie.max_age, httponly=True,
                        samesite="lax", secure=cookie.secure, path="/")


def page_route(auth: SessionAuth, prefix: str, error_page: ErrorPage) -> type[APIRoute]:
    """A route class: no session -> redirect to the sign-in page (coming back afterwards); a ``Problem`` or
    invalid parameters -> the site's HTML error page with the same status; a session opened by the request
    (trusted-header mode) -> its cookie set on the answer."""

    class PageRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            original = super().get_route_handler()

            async def handler(request: Request) -> Response:
                try:
                    response = await original(request)
                except SignInRequired:
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return RedirectResponse(f"{prefix}/signin?next={quote(target)}", status_code=303)
                except Problem as exc:
                    response = error_page(request, exc.status, exc.title, exc.detail, exc.errors)
                except RequestValidationError as exc:
                    response = error_page(request, 422, "Invalid request", None, field_errors(exc.errors()))
                pending: PendingCookie | None = getattr(request.state, "pending_cookie", None)
                if pending is not None:
                    set_session_cookie(auth, response, pending)
                return response

            return handler

    return PageRoute


def add_sign_in_routes(router: APIRouter, auth: SessionAuth, render: Render, *, prefix: str, home: str) -> None:
    """GET/POST ``{prefix}/signin`` and POST ``{prefix}/signout`` on the site's router."""
    site, settings = auth.site, auth.settings

    def signin_cookie(response: Response, token: str) -> None:
        response.set_cookie(site.signin_csrf_cookie, token, max_age=SIGNIN_FORM_SECONDS, httponly=True,
                            samesite="strict", secure=settings.cookie_secure, path=prefix)

    @router.get("/signin")
    async def signin_page(request: Request, next: str | None = None) -> Response:
        token = new_csrf_token()
        response = render(request, "signin.html", next=safe_next(next, prefix, home), csrf=token, error=None,
                          trusted=settings.trusted_header_auth)
        signin_cookie(response, token)
        return response

    @router.post("/signin")
    async def signin(request: Request) -> Response:
        form = await request.form()
        # No session yet: a double-submit token (cookie + field) stops a forged sign-in into our account.
        if not same_token(form_text(form, "csrf_token"), request.cookies.get(site.signin_csrf_cookie)):
            raise Problem(403, "Forbidden", "the sign-in form expired; reload it and try again",
                          errors=[{"field": "csrf_token", "message": "does not match"}])
        target = safe_next(form_text(form, "next"), prefix, home)
        try:
            # The client behind the request: uvicorn takes it from X-Forwarded-For only when the peer is a
            # trusted proxy (FORWARDED_ALLOW_IPS), so a client cannot pick its own address.
            _, cookie, device = await auth.sign_in(
                form_text(form, "username") or "", form_text(form, "password") or "",
                client_host=request.client.host if request.client else None,
                device_cookie=request.cookies.get(site.device_cookie))
        except SignInFailed as exc:
            token = new_csrf_token()
            failed = render(request, "signin.html", status=401, next=target, csrf=token, error=str(exc),
                            trusted=False)
            signin_cookie(failed, token)
            return failed
        response: Response = RedirectResponse(target, status_code=303)
        set_session_cookie(auth, response, cookie)
        # A known device of the account from now on: a stranger's guesses elsewhere cannot pause it.
        response.set_cookie(site.device_cookie, device.value, max_age=device.max_age, httponly=True,
                            samesite="strict", secure=device.secure, path=prefix)
        response.delete_cookie(site.signin_csrf_cookie, path=prefix)
        return response

    @router.post("/signout")
    async def signout(request: Request) -> Response:
        viewer = await auth.viewer(request)
        if viewer is None:
            raise SignInRequired
        request.state.viewer = viewer
        form = await request.form()
        auth.check_csrf(viewer, form_text(form, "csrf_token"))
        await auth.sign_out(viewer)
        response = RedirectResponse(f"{prefix}/signin", status_code=303)
        response.delete_cookie(site.session_cookie, path="/")
        return response
