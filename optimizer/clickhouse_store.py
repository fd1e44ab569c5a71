"""Mining from ClickHouse: the OpenTelemetry Collector ClickHouse exporter's ``otel_traces``.

Filtering and counting happen in the database: only failing calls, adverse feedback
and the calls feedback points at come back. Every attribute value is a string there
(the exporter stores ``Map(LowCardinality(String), String)``); the records parse them.
Values reach SQL as ClickHouse query parameters, never spliced into the text.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from optimizer.records import FEEDBACK_SPAN, CallRecord, FeedbackRecord, from_attributes

Query = Callable[[str, Mapping[str, str]], list[dict[str, Any]]]  # SQL with {name:Type} params → rows

_A = "SpanAttributes"
_IS_CALL = f"mapContains({_A}, 'gen_ai.operation.name') AND {_A}['gen_ai.prompt.name'] = {{prompt:String}}"
_ROW = f"SpanName AS name, {_A} AS attributes, toUnixTimestamp64Nano(Timestamp) AS ns, Duration AS duration"


class ClickHouseError(RuntimeError):
    pass


class ClickHouseSpanStore:
    def __init__(self, query: Query, table: str = "otel_traces") -> None:
        if not table.replace("_", "").replace(".", "").isalnum():
            raise ClickHouseError(f"bad table name {table!r}")
        self._query = query
        self._table = table

    @classmethod
    def connect(cls, url: str, table: str = "otel_traces") -> ClickHouseSpanStore:
        """``clickhouse://[user:password@]host:port/database`` over ClickHouse's HTTP interface."""
        return cls(http_query(url), table)

    def call_counts(self, prompt: str) -> Mapping[str, int]:
        rows = self._query(
            f"SELECT {_A}['gen_ai.prompt.version'] AS version, count() AS n FROM {self._table} "
            f"WHERE {_IS_CALL} GROUP BY version",
            {"prompt": prompt},
        )
        return {row["version"]: int(row["n"]) for row in rows}

    def failing_calls(self, prompt: str) -> Iterable[CallRecord]:
        where = f"{_IS_CALL} AND ({_A}['flywheel.eval.schema_valid'] = 'false' OR {_A}['error.type'] NOT IN ('', 'cancelled'))"
        return self._records(where, {"prompt": prompt}, CallRecord)

    def adverse_feedback(self) -> Iterable[FeedbackRecord]:
        where = (
            f"SpanName = '{FEEDBACK_SPAN}' AND (toFloat64OrZero({_A}['gen_ai.evaluation.score.value']) < 0.5 "
            f"OR {_A}['gen_ai.evaluation.score.label'] = 'down' OR {_A}['flywheel.feedback.correction'] != '')"
        )
        return self._records(where, {}, FeedbackRecord)

    def calls(self, request_ids: set[str]) -> Iterable[CallRecord]:
        where = f"SpanName != '{FEEDBACK_SPAN}' AND has({{ids:Array(String)}}, {_A}['flywheel.request_id'])"
        return self._records(where, {"ids": _array(request_ids)}, CallRecord)

    def _records(self, where: str, params: Mapping[str, str], kind: type) -> list[Any]:
        rows = self._query(f"SELECT {_ROW} FROM {self._table} WHERE {where} ORDER BY ns", params)
        found = (
            from_attributes(row["name"], row["attributes"], int(row["ns"]), int(row["ns"]) + int(row["duration"]))
            for row in rows
        )
        return [record for record in found if isinstance(record, kind)]


def _array(values: Iterable[str]) -> str:
    """A ClickHouse Array(String) literal for a query parameter."""
    quoted = (v.replace("\\", "\\\\").replace("'", "\\'") for v in sorted(values))
    return "[" + ",".join(f"'{v}'" for v in quoted) + "]"


def http_query(url: str) -> Query:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "clickhouse" or not parsed.hostname:
        raise ClickHouseError(f"{url}: expected clickhouse://host:port/database")
    base = f"http://{parsed.hostname}:{parsed.port or 8123}/"
    database = parsed.path.strip("/") or "default"
    headers = {"X-ClickHouse-Database": database}
    if parsed.username:
        headers["X-ClickHouse-User"] = urllib.parse.unquote(parsed.username)
        headers["X-ClickHouse-Key"] = urllib.parse.unquote(parsed.password or "")

    def query(sql: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        address = base + "?" + urllib.parse.urlencode({f"param_{k}": v for k, v in params.items()})
        request = urllib.request.Request(address, data=(sql + " FORMAT JSONEachRow").encode(), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return [orjson.loads(line) for line in response if line.strip()]
        except urllib.error.HTTPError as exc:
            raise ClickHouseError(f"ClickHouse said {exc.code}: {exc.read(500).decode(errors='replace')}") from exc
        except OSError as exc:
            raise ClickHouseError(f"cannot reach ClickHouse at {parsed.hostname}:{parsed.port or 8123}: {exc}") from exc

    return query
