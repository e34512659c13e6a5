"""Kafka header values are arbitrary bytes (or null); the outbox and dead_letters keep them in jsonb,
which cannot hold U+0000. The stored form must be valid for PostgreSQL and give back the exact bytes."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from shared.outbox import decode_headers, encode_headers, headers_json

header_keys = st.text(max_size=20)
header_values = st.one_of(st.none(), st.binary(max_size=64))


@given(st.lists(st.tuples(header_keys, header_values), max_size=8))
def test_any_headers_round_trip_through_the_stored_form(headers: list[tuple[str, bytes | None]]) -> None:
    stored = headers_json(headers)
    assert "\\u0000" not in stored  # jsonb rejects it ("unsupported Unicode escape sequence")
    assert decode_headers(orjson.loads(stored)) == headers
    # the plain-headers shortcut writes exactly what the general encoding writes
    assert stored == orjson.dumps(encode_headers(headers)).decode()
    assert headers_json(iter(headers)) == stored


def test_nul_and_invalid_utf8_values_and_nul_keys() -> None:
    headers = [("trace", b"a\x00b"), ("bin", b"\xff\xfe\x80"), ("k\x00", b"v"), ("none", None),
               ("event_type", b"ticket.opened")]
    entries = encode_headers(headers)
    assert entries[0][2] == "b64" and entries[2][2] == "b64k"
    assert entries[1] == ["bin", "\xff\xfe\x80"]  # no NUL: latin-1 text, as rows were always stored
    assert entries[4] == ["event_type", "ticket.opened"]
    assert decode_headers(entries) == headers


def test_rows_written_before_the_markers_still_decode() -> None:
    assert decode_headers([["event_type", "ticket.opened"], ["x", "\xe9"]]) == [
        ("event_type", b"ticket.opened"), ("x", b"\xe9")]
    assert decode_headers(None) == []
