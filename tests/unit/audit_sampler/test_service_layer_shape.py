"""The audit service layer's shape: refusals are domain errors mapped to problem details in one place, the
region filter is built once, and a broken workbench stops start-up instead of vanishing."""

from __future__ import annotations

import importlib
import sys

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from services.audit_sampler.api import AuditApiRoute
from services.audit_sampler.operations.errors import AuditError, Conflict, Forbidden, Invalid, NotFound
from services.audit_sampler.persistence.regions import region_filter
from services.audit_sampler.problems import AuditErrorRoute, as_problem, problem_for
from shared.http import Problem, install_problem_handlers

FIELD = [{"field": "region", "message": "not in the region catalogue"}]


@pytest.mark.parametrize(("error", "status", "title"), [
    (NotFound("item 7 does not exist", errors=FIELD), 404, "Not Found"),
    (Forbidden("no grant for region GB", errors=FIELD), 403, "Forbidden"),
    (Conflict("item 7 already has a verdict"), 409, "Conflict"),
    (Invalid("a reason is required", errors=FIELD), 422, "Invalid request"),
    (Invalid("amount: too much", errors=FIELD, title="Invalid verdict"), 422, "Invalid verdict"),
])
def test_each_refusal_maps_to_its_status_title_detail_and_fields(error, status, title):
    problem = problem_for(error)
    assert (problem.status, problem.title, problem.detail) == (status, title, error.detail)
    assert problem.errors == error.errors
    assert as_problem(error).status == status


def test_a_page_problem_passes_through_and_an_unmapped_refusal_is_a_bug():
    own = Problem(422, "Invalid form", "NUL")
    assert as_problem(own) is own

    class Unmapped(AuditError):
        pass

    with pytest.raises(TypeError, match="Unmapped"):
        problem_for(Unmapped("?"))


def test_the_service_layer_never_builds_an_http_problem():
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[3] / "services" / "audit_sampler" / "operations"
    offenders = []
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(("shared.http", "fastapi")):
                offenders.append(f"{path.name}: imports {node.module}")
            if isinstance(node, ast.Attribute) and node.attr in ("require_role", "require_region") \
                    and isinstance(node.value, ast.Name) and node.value.id == "principal":
                offenders.append(f"{path.name}:{node.lineno}: principal.{node.attr} raises an HTTP problem")
    assert offenders == []


async def test_the_json_api_answers_a_refusal_as_problem_json():
    app = FastAPI()
    install_problem_handlers(app)
    router = APIRouter(route_class=AuditApiRoute)

    @router.post("/things/{n}")
    async def refuse(n: int) -> dict[str, int]:
        raise (Conflict(f"thing {n} is already done") if n == 1 else
               Invalid("bad thing", errors=[{"field": "n", "message": "odd"}], title="Invalid thing"))

    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        conflict = await client.post("/things/1")
        invalid = await client.post("/things/2")
    assert conflict.status_code == 409 and conflict.headers["content-type"] == "application/problem+json"
    assert conflict.json() == {"type": "about:blank", "title": "Conflict", "status": 409,
                               "detail": "thing 1 is already done", "instance": "/things/1"}
    assert invalid.status_code == 422 and invalid.json()["title"] == "Invalid thing"
    assert invalid.json()["errors"] == [{"field": "n", "message": "odd"}]


def test_the_api_and_the_workbench_routes_map_refusals():
    from services.audit_sampler.web.pages import workbench_router

    assert issubclass(AuditApiRoute, AuditErrorRoute)
    router = workbench_router(auth=None)  # type: ignore[arg-type]  # the route class only keeps the reference
    assert issubclass(router.route_class, AuditErrorRoute)
    # The page route must see the Problem: the mapping sits below it in the method resolution order.
    mro = router.route_class.__mro__
    assert mro.index(AuditErrorRoute) > 1


def test_one_region_filter_for_every_listing():
    everyone = region_filter("region", None)
    assert everyone.params == {"regions": None}
    assert everyone.sql == "(CAST(:regions AS text[]) IS NULL OR region = ANY(CAST(:regions AS text[])))"
    some = region_filter("d.region", ("GB", "US"))
    assert some.params == {"regions": ["GB", "US"]} and "d.region = ANY" in some.sql
    assert some.bind(n=5) == {"n": 5, "regions": ["GB", "US"]}
    for unsafe in ("region; DROP TABLE verdicts", "Region", "a.b.c", ""):
        with pytest.raises(ValueError):
            region_filter(unsafe, None)


def test_a_broken_workbench_import_stops_start_up(monkeypatch):
    """The workbench is not optional: the app module (and so the service) refuses to load without it,
    rather than serving the JSON API with readiness green and the pages silently gone."""
    monkeypatch.setitem(sys.modules, "services.audit_sampler.web", None)  # importing it raises ImportError
    monkeypatch.delitem(sys.modules, "services.audit_sampler.app", raising=False)
    monkeypatch.delitem(sys.modules, "services.audit_sampler.__main__", raising=False)
    with pytest.raises(ImportError, match=r"services\.audit_sampler\.web"):
        importlib.import_module("services.audit_sampler.app")
    with pytest.raises(ImportError, match=r"services\.audit_sampler\.web"):
        importlib.import_module("services.audit_sampler.__main__")


async def test_the_service_mounts_the_workbench_and_the_reports():
    from services.audit_sampler.app import build_app
    from services.audit_sampler.config import Settings

    app = build_app(Settings())
    assert {"/v1/queues", "/v1/reports/accuracy"} <= set(app.openapi()["paths"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://audit") as client:
        page = await client.get("/workbench/queues")  # signed out: sent to the sign-in page, not a 404
    assert page.status_code == 303 and page.headers["location"].startswith("/workbench/signin")
    assert app.state.audit_runtime.limits is not None
    await app.state.ctx.engine.dispose()
