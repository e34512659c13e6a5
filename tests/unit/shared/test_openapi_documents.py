"""The OpenAPI documents tell the truth (issue 11, part 8), checked on each service's generated document
without running anything: schemathesis (tests/integration/test_openapi_schemathesis.py) then checks the
running services against them."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.http import PROBLEM_JSON
from shared.regions import catalogue

SERVICES = ("intake", "auto_comp", "audit_sampler", "ledger")


def _app(name: str) -> Any:
    config = importlib.import_module(f"services.{name}.config")
    return importlib.import_module(f"services.{name}.app").build_app(config.Settings())


@pytest.fixture(scope="module", params=SERVICES)
def document(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _app(request.param).openapi()


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items()]


def test_every_error_answer_is_documented_as_problem_json(document):
    for path, method, op in _operations(document):
        for status, response in op["responses"].items():
            if status[0] in "45":
                assert list(response["content"]) == [PROBLEM_JSON], (method, path, status)
                assert response["content"][PROBLEM_JSON]["schema"] == {"$ref": "#/components/schemas/ProblemDetails"}
        assert "HTTPValidationError" not in str(op)


def test_every_api_operation_states_its_security_and_refusals(document):
    schemes = document["components"]["securitySchemes"]
    for path, method, op in _operations(document):
        if not path.startswith("/v1/"):
            continue
        assert op["security"] and all(set(req) <= set(schemes) for req in op["security"]), (method, path)
        assert {"400", "401", "403"} <= set(op["responses"]), (method, path)
        if "requestBody" in op:
            assert {"413", "415", "422"} <= set(op["responses"]), (method, path)


def test_regions_are_the_catalogues_and_required_parameters_are_marked(document):
    for path, method, op in _operations(document):
        for param in op.get("parameters", []):
            if param["in"] == "path":
                assert param["required"] is True, (method, path, param["name"])
            if param["name"] == "region":
                strings = [b for b in [param["schema"], *param["schema"].get("anyOf", [])] if b.get("type") == "string"]
                assert strings and all(b["enum"] == catalogue().codes() for b in strings), (method, path)
            assert param["schema"] != {"type": "string"}, f"{method} {path} {param['name']} is unbounded"


def test_a_path_served_by_several_routes_allows_all_their_methods():
    client = TestClient(_app("ledger"))
    r = client.delete("/v1/budgets/SG/2026-11")
    assert r.status_code == 405 and r.headers["content-type"] == PROBLEM_JSON
    assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "PUT"}
