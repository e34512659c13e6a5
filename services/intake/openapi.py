"""OpenAPI of the event routes: bodies, results and problem documents as named components."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import models_json_schema

from services.intake.domain.items import ITEM_MODELS
from shared.http import problem_doc

REF = "#/components/schemas/{model}"


class SubmitResult(BaseModel):
    event_id: str
    status: Literal["accepted", "duplicate"] = Field(
        description="accepted: stored now and queued for the broker; duplicate: the same event was "
                    "already accepted earlier (nothing new happens).")
    request_id: str | None = Field(default=None, description="Compensation requests only: the request's id, "
                                   "to issue against once approved.")


class ItemError(BaseModel):
    field: str
    message: str


class BatchItemResult(BaseModel):
    index: int = Field(description="Position of the item in the request.")
    event_id: str | None
    status: Literal["accepted", "duplicate", "rejected", "conflict"]
    request_id: str | None = Field(default=None, description="Accepted compensation requests only.")
    errors: list[ItemError] | None = Field(
        default=None, description="Why the item was rejected (fields relative to the item).")


class BatchResult(BaseModel):
    accepted: int
    duplicate: int
    rejected: int = Field(description="Rejected and conflicting items.")
    results: list[BatchItemResult] = Field(description="One result per item, in request order.")


def _batch_model(item: type[BaseModel], max_items: int) -> type[BaseModel]:
    extra: Any = item.model_config.get("json_schema_extra") or {}
    example = extra.get("examples", [{}])[0]
    return create_model(  # type: ignore[call-overload,no-any-return]
        f"{item.__name__}Batch",
        __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [{"items": [example]}]}),
        items=(list[item], Field(min_length=1, max_length=max_items)),  # type: ignore[valid-type]
    )


def components(max_items: int) -> dict[str, Any]:
    models: list[type[BaseModel]] = [SubmitResult, BatchResult]
    for item in ITEM_MODELS.values():
        models += [item, _batch_model(item, max_items)]
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    found = dict(top.get("$defs", {}))
    for item in ITEM_MODELS.values():
        # A batch is judged item by item: an item that does not match the item schema is rejected in the
        # results (200) and the others still count, so the body schema admits any item and says which
        # shape is wanted (a 422 is for the batch itself: no items, too many, unknown fields).
        items = found[f"{item.__name__}Batch"]["properties"]["items"]
        items["items"] = {"anyOf": [_ref(item.__name__), {}], "description": (
            f"A {item.__name__} each; anything else is rejected in its result, the other items are judged "
            "on their own.")}
    return found


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": REF.format(model=name)}


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: problem_doc(400, "The body is not JSON, or the X-Correlation-Id header is malformed."),
    401: problem_doc(401, "Missing, invalid or revoked API key or token."),
    403: problem_doc(403, "The credential may not send this event type (or, for a single event, to its region)."),
    413: problem_doc(413, "The body is larger than the limit."),
    415: problem_doc(415, "The body is not sent as application/json."),
    422: problem_doc(422, "Invalid body; ``errors`` names each bad field (every timestamp an RFC 3339 string "
                          "with an offset in the years 1970 to 2199, every amount within its bounds)."),
    429: problem_doc(429, "The API key's rate limit is exceeded."),
    503: problem_doc(503, "Too many events wait for the broker, the database is unavailable, or credentials "
                          "cannot be checked right now; nothing was stored."),
}


def _body(schema_name: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _ref(schema_name)}}}}


def single_operation(event_type: str) -> dict[str, Any]:
    name = ITEM_MODELS[event_type].__name__
    return {
        "description": f"Submit one `{event_type}` event. Accepted means durably stored; it reaches the "
                       "broker even if the broker is down now. Re-sending the same event id with the same "
                       "content answers `duplicate`; with different content, 409.",
        "responses": {202: {"description": "Accepted or duplicate.",
                            "content": {"application/json": {"schema": _ref("SubmitResult")}}},
                      409: problem_doc(409, "The event id was already received with different content."),
                      **_ERRORS},
        "openapi_extra": _body(name),
    }


def batch_operation(event_type: str, max_items: int) -> dict[str, Any]:
    name = ITEM_MODELS[event_type].__name__ + "Batch"
    return {
        "description": f"Submit up to {max_items} `{event_type}` events. Each item is judged on its own: "
                       "the answer lists, in order, accepted, duplicate, rejected (with the item's errors) "
                       "or conflict (event id reused with different content).",
        "responses": {200: {"description": "Per-item results.",
                            "content": {"application/json": {"schema": _ref("BatchResult")}}}, **_ERRORS},
        "openapi_extra": _body(name),
    }


SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "Per upstream system; created with `python -m services.intake keys create`."},
    "Bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
               "description": "Platform token with role service or ops_admin."},
}
