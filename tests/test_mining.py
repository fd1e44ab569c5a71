"""Failure mining from real proxy spans: the file reader, and ClickHouse (chdb, the
Collector exporter's own table) giving the same failures on the same spans."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from chdb import session as chdb_session

from flywheel.registry import open_registry
from flywheel.registry.version import content_from_mapping
from flywheel.spans import SpanRecord, open_span_source
from optimizer.clickhouse_store import ClickHouseSpanStore, _array
from optimizer.file_store import FileSpanStore
from optimizer.mining import FailureKind, Mined, mine
from tests.fake_upstream import FakeUpstream, Reply
from tests.traffic import ask, give_feedback, recording

CHAT = "/v1/chat/completions"
TABLE_SQL = Path(__file__).parent / "data" / "otel_traces.sql"


@pytest.fixture
async def spans_file(upstream: FakeUpstream, tmp_path: Path) -> Path:
    """Traffic through a real proxy: valid and schema-invalid outputs, an upstream error,
    negative feedback, a correction, praise, and calls of another prompt."""
    registry = open_registry(tmp_path / "registry")
    good = {"type": "object", "required": ["answer"]}
    bad = {"type": "object", "required": ["score"]}  # the fake answers {"answer": …}: always invalid
    v1, _ = registry.push("extract", content_from_mapping({"template": "Extract.", "response_schema": good}))
    v2, _ = registry.push("extract", content_from_mapping({"template": "Extract!", "response_schema": bad}))
    registry.push("other", content_from_mapping({"template": "Other."}))
    registry.set_rollout("extract", stable=v1.hash, canary=v2.hash, weight=50)
    path = tmp_path / "spans.jsonl"
    ids: dict[str, list[str]] = {"stable": [], "canary": []}
    stable_key = ""
    async with recording(upstream, registry, path) as (proxy, client):
        for i in range(30):
            request_id, arm = await ask(client, "extract", f"user-{i}", f"question {i}")
            ids[arm].append(request_id)
            if arm == "stable":
                stable_key = f"user-{i}"  # the salt is random: find a key that lands on stable
        upstream.script(CHAT, Reply(status=500, body=[b'{"error":{"message":"boom","type":"server_error"}}']))
        with pytest.raises(openai.InternalServerError):
            await ask(client, "other", "user-x", "x")
        upstream.script(CHAT, Reply(status=503, body=[b'{"error":{"message":"busy","type":"server_error"}}']))
        with pytest.raises(openai.InternalServerError):
            await ask(client, "extract", stable_key, "y")
        stable = ids["stable"]
        await give_feedback(
            proxy,
            [
                {"request_id": stable[0], "thumbs": "down", "comment": "missed the total amount"},
                {"request_id": stable[1], "score": 0.9, "correction": "Total: 42 EUR"},
                {"request_id": stable[2], "thumbs": "up"},
                {"request_id": "req_not_ours", "thumbs": "down"},
            ],
        )
    return path


def _summary(mined: Mined) -> dict[str, Any]:
    return {
        "versions": {v: (s.calls, s.failed, dict(s.by_kind)) for v, s in mined.versions.items()},
        "failures": sorted((f.call.request_id, tuple(sorted(f.kinds))) for f in mined.sample),
        "groups": mined.groups,
        "captured": mined.content_captured,
    }


async def test_file_mining_finds_every_kind_of_failure(spans_file: Path) -> None:
    mined = mine(FileSpanStore(open_span_source(spans_file)), "extract", sample_size=100)
    by_version = {v: s for v, s in mined.versions.items()}
    assert sum(s.calls for s in by_version.values()) == 31
    canary = max(by_version.values(), key=lambda s: s.failure_rate)
    stable = min(by_version.values(), key=lambda s: s.failure_rate)
    assert canary.failure_rate == 1.0 and canary.by_kind[FailureKind.SCHEMA_INVALID] == canary.calls
    assert stable.by_kind == {
        FailureKind.NEGATIVE_FEEDBACK: 1,
        FailureKind.CORRECTION: 1,
        FailureKind.UPSTREAM_ERROR: 1,
    }
    feedback = [f for f in mined.sample if f.feedback]
    assert {f.feedback[0].comment or f.feedback[0].correction for f in feedback} == {
        "missed the total amount",
        "Total: 42 EUR",
    }
    assert mined.content_captured and all(f.call.input_messages for f in mined.sample)
    assert all(f.call.prompt == "extract" for f in mined.sample)


async def test_sample_is_bounded_and_spread_over_groups(spans_file: Path) -> None:
    mined = mine(FileSpanStore(open_span_source(spans_file)), "extract", sample_size=4)
    assert len(mined.sample) == 4 and mined.failures > 4
    kinds = {frozenset(f.kinds) for f in mined.sample}
    assert len(kinds) == 4  # one of each group, not four schema failures


def _clickhouse_rows(spans: Iterator[SpanRecord]) -> Iterator[bytes]:
    """Rows as the Collector's ClickHouse exporter writes them (every value a string)."""
    kinds = {1: "Internal", 2: "Server", 3: "Client"}
    for span in spans:
        yield orjson.dumps(
            {
                "Timestamp": f"{span.start_ns // 10**9}.{span.start_ns % 10**9:09d}",
                "TraceId": span.trace_id,
                "SpanId": span.span_id,
                "ParentSpanId": span.parent_span_id or "",
                "SpanName": span.name,
                "SpanKind": kinds.get(span.kind, "Unspecified"),
                "ServiceName": span.resource.get("service.name", ""),
                "ResourceAttributes": {k: _as_string(v) for k, v in span.resource.items()},
                "SpanAttributes": {k: _as_string(v) for k, v in span.attributes.items()},
                "Duration": span.end_ns - span.start_ns,
                "StatusCode": {0: "Unset", 1: "Ok", 2: "Error"}[span.status_code],
            }
        )


def _as_string(value: Any) -> str:
    """pcommon.Value.AsString(), which the exporter uses for every attribute."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if not math.isinf(value) else str(value)
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return str(value)


def _chdb_store(spans_file: Path, tmp_path: Path) -> ClickHouseSpanStore:
    db = chdb_session.Session(str(tmp_path / "chdb"))
    db.query(TABLE_SQL.read_text())
    rows = b"\n".join(_clickhouse_rows(open_span_source(spans_file).spans())).decode()
    db.query("INSERT INTO otel_traces FORMAT JSONEachRow " + rows)

    def query(sql: str, params: Any) -> list[dict[str, Any]]:
        result = db.query(sql, "JSONEachRow", params=dict(params))
        return [orjson.loads(line) for line in result.bytes().splitlines() if line.strip()]

    return ClickHouseSpanStore(query)


async def test_clickhouse_gives_the_same_failures_as_the_files(spans_file: Path, tmp_path: Path) -> None:
    from_files = mine(FileSpanStore(open_span_source(spans_file)), "extract", sample_size=100)
    from_clickhouse = mine(_chdb_store(spans_file, tmp_path), "extract", sample_size=100)
    assert _summary(from_clickhouse) == _summary(from_files)
    assert from_clickhouse.failures == from_files.failures > 10


def test_query_parameters_are_escaped() -> None:
    assert _array({"a'b", "c\\d"}) == "['a\\'b','c\\\\d']"
