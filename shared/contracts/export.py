"""Export the contracts: one JSON Schema per (event type, version) and an AsyncAPI 3 document.

``python -m shared.contracts export [DIR]`` writes them (default: ``contracts/`` at the repo root);
``python -m shared.contracts check [DIR]`` fails when the models are no longer compatible with the
committed schemas (see ``compatibility_errors``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import yaml

from shared.contracts.envelope import Envelope
from shared.contracts.registry import REGISTRY, EventSpec
from shared.contracts.topics import Topic

REPO_CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"


def schema_name(spec: EventSpec) -> str:
    return f"{spec.event_type}.v{spec.version}.schema.json"


def event_schema(spec: EventSpec) -> dict[str, Any]:
    """The envelope schema with ``payload`` replaced by the payload model's schema."""
    envelope = Envelope.model_json_schema()
    payload = spec.model.model_json_schema(ref_template="#/$defs/{model}")
    defs = {**envelope.pop("$defs", {}), **payload.pop("$defs", {})}
    envelope["properties"]["payload"] = payload
    envelope["properties"]["event_type"] = {"const": spec.event_type, "type": "string"}
    envelope["properties"]["schema_version"] = {"const": spec.version, "type": "integer"}
    envelope["title"] = f"{spec.event_type} v{spec.version}"
    envelope["description"] = spec.description
    envelope["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    envelope["$id"] = f"urn:compensation-platform:event:{spec.event_type}:v{spec.version}"
    if defs:
        envelope["$defs"] = defs
    envelope["x-topic"] = spec.topic.value
    return envelope


def message_headers(spec: EventSpec) -> dict[str, Any]:
    """The Kafka headers every producer sends with an event (``shared.kafka.envelope_headers`` and the
    services' fast paths that write the same bytes): copies of envelope fields, for routing and tracing
    without decoding the value."""
    envelope = Envelope.model_json_schema()["properties"]
    return {
        "type": "object",
        "properties": {
            "event_type": {"type": "string", "const": spec.event_type},
            "schema_version": {"type": "string", "const": str(spec.version)},
            "event_id": {k: v for k, v in envelope["event_id"].items() if k != "title"},
            "correlation_id": {k: v for k, v in envelope["correlation_id"].items() if k != "title"},
            "region": {k: v for k, v in envelope["region"].items() if k != "title"},
            "content-type": {"type": "string", "const": "application/json"},
            "traceparent": {"type": "string", "maxLength": 55,
                            "description": "W3C trace context; sent only when the event carries one."},
        },
        "required": ["event_type", "schema_version", "event_id", "correlation_id", "region", "content-type"],
    }


DEAD_LETTER_HEADERS = {
    "dlq.error": "Why the record was set aside (at most 4,000 characters).",
    "dlq.source_topic": "The topic it was read from.",
    "dlq.source_partition": "Its partition there (decimal).",
    "dlq.source_offset": "Its offset there (decimal).",
    "dlq.consumer_group": "The consumer group that could not process it.",
}


def _dead_letter_message() -> dict[str, Any]:
    return {
        "name": "dead_letter",
        "title": "Dead letter",
        "summary": "A record a consumer could not process: the original bytes as value, the original headers "
                   "(those of the event, when it had them) plus the dlq.* headers; key = source topic.",
        "contentType": "application/octet-stream",
        "headers": {"type": "object",
                    "properties": {h: {"type": "string", "description": d} for h, d in DEAD_LETTER_HEADERS.items()},
                    "required": sorted(DEAD_LETTER_HEADERS), "additionalProperties": {"type": "string"}},
        "payload": {"description": "The original record value, unchanged (may be anything, even not JSON)."},
        "bindings": {"kafka": {"key": {"type": "string", "description": "source topic"}}},
    }


def asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in REGISTRY.values():
        name = f"{spec.event_type.replace('.', '_')}_v{spec.version}"
        messages[name] = {
            "name": spec.event_type,
            "title": f"{spec.event_type} v{spec.version}",
            "summary": spec.description,
            "contentType": "application/json",
            "headers": message_headers(spec),
            "payload": {"$ref": f"./{schema_name(spec)}"},
            "bindings": {"kafka": {"key": {"type": "string", "description": _key_doc(spec)}}},
        }
        channel = channels.setdefault(spec.topic.value.replace(".", "_"), {
            "address": spec.topic.value, "messages": {}})
        channel["messages"][name] = {"$ref": f"#/components/messages/{name}"}
    for channel_id, channel in channels.items():
        operations[f"publish_{channel_id}"] = {
            "action": "send", "channel": {"$ref": f"#/channels/{channel_id}"},
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{m}"} for m in channel["messages"]]}
    dead = Topic.DEAD_LETTERS.value.replace(".", "_")
    messages["dead_letter"] = _dead_letter_message()
    channels[dead] = {
        "address": Topic.DEAD_LETTERS.value,
        "description": "Poison messages: original bytes as value, original headers plus dlq.error, "
                       "dlq.source_topic, dlq.source_partition, dlq.source_offset, dlq.consumer_group; "
                       "key = source topic.",
        "messages": {"dead_letter": {"$ref": "#/components/messages/dead_letter"}}}
    operations[f"publish_{dead}"] = {
        "action": "send", "channel": {"$ref": f"#/channels/{dead}"},
        "messages": [{"$ref": f"#/channels/{dead}/messages/dead_letter"}]}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Compensation platform events", "version": "1.0.0",
                 "description": "Every message is a JSON envelope (event id, type, schema version, "
                                "occurred_at, produced_at, source, region, correlation/causation ids, "
                                "trace context) with a typed payload. Delivery is at-least-once; consumers "
                                "deduplicate by event_id."},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def _key_doc(spec: EventSpec) -> str:
    return {"_region": "region code", "_allowance": "allowance_id"}.get(spec.key.__name__, "buyer_id")


def export(directory: Path = REPO_CONTRACTS) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in REGISTRY.values():
        path = directory / schema_name(spec)
        path.write_bytes(orjson.dumps(event_schema(spec), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
                         + b"\n")
        written.append(path)
    api = directory / "asyncapi.yaml"
    api.write_text(yaml.safe_dump(asyncapi(), sort_keys=False, width=110), encoding="utf-8")
    written.append(api)
    return written


# ------------------------------------------------------------------ compatibility

def compatibility_errors(old: dict[str, Any], new: dict[str, Any], path: str = "") -> list[str]:
    """Breaking differences for consumers of ``old`` data and producers of ``old``-shaped events.

    Breaking: a property removed, a property newly required, a type changed, an enum value removed,
    a const changed, closed objects opened or vice versa. Adding optional properties or enum values is
    compatible (consumers ignore nothing: producers must upgrade first for new enum values).
    """
    errors: list[str] = []
    old_defs, new_defs = old.get("$defs", {}), new.get("$defs", {})

    def resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
        seen = 0
        while "$ref" in node and seen < 20:
            node = defs.get(node["$ref"].rsplit("/", 1)[-1], {})
            seen += 1
        return node

    def walk(o: dict[str, Any], n: dict[str, Any], where: str) -> None:
        o, n = resolve(o, old_defs), resolve(n, new_defs)
        if o.get("type") != n.get("type") and "type" in o:
            errors.append(f"{where}: type {o.get('type')} -> {n.get('type')}")
        if "const" in o and o.get("const") != n.get("const"):
            errors.append(f"{where}: const {o.get('const')} -> {n.get('const')}")
        if "enum" in o:
            removed = set(o["enum"]) - set(n.get("enum", o["enum"]))
            if removed:
                errors.append(f"{where}: enum values removed {sorted(removed)}")
        for key in ("anyOf", "oneOf"):
            if key in o and key in n and len(o[key]) == len(n[key]):
                for i, (a, b) in enumerate(zip(o[key], n[key], strict=True)):
                    walk(a, b, f"{where}.{key}[{i}]")
            elif key in o and key not in n:
                errors.append(f"{where}: {key} changed shape")
        if "items" in o and isinstance(o["items"], dict):
            walk(o["items"], n.get("items", {}), f"{where}[]")
        o_props, n_props = o.get("properties", {}), n.get("properties", {})
        for name, sub in o_props.items():
            if name not in n_props:
                errors.append(f"{where}.{name}: property removed")
            else:
                walk(sub, n_props[name], f"{where}.{name}")
        newly_required = set(n.get("required", [])) - set(o.get("required", []))
        for name in sorted(newly_required):
            errors.append(f"{where}.{name}: newly required")
        if o.get("additionalProperties") != n.get("additionalProperties"):
            errors.append(f"{where}: additionalProperties {o.get('additionalProperties')} -> "
                          f"{n.get('additionalProperties')}")

    walk(old, new, path or "$")
    return errors


def check(directory: Path = REPO_CONTRACTS) -> list[str]:
    problems: list[str] = []
    for spec in REGISTRY.values():
        path = directory / schema_name(spec)
        if not path.exists():
            problems.append(f"{path.name}: not exported (run `python -m shared.contracts export`)")
            continue
        committed = orjson.loads(path.read_bytes())
        problems.extend(f"{path.name}: {e}" for e in compatibility_errors(committed, event_schema(spec)))
    return problems


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "export"
    directory = Path(argv[1]) if len(argv) > 1 else REPO_CONTRACTS
    if command == "export":
        for path in export(directory):
            print(path)
        return 0
    if command == "check":
        problems = check(directory)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    print("usage: python -m shared.contracts export|check [DIR]", file=sys.stderr)
    return 2
