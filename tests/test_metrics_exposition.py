"""The per-call series are plain numbers turned into metric families at scrape time;
the exposition must read exactly as prometheus_client's own Counter and Histogram
would write it for the same calls."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.metrics import _CALL, _LATENCY_BUCKETS, _TTFC_BUCKETS, ProxyMetrics

CALLS = st.lists(
    st.tuples(
        st.sampled_from(
            [("", "", "", ""), ("support", "abc123", "stable", "gpt-4o"), ("support", "def456", "canary", "m")]
        ),
        st.sampled_from(["2xx", "4xx", "5xx", "cancelled"]),
        st.floats(0, 700, allow_nan=False),
        st.one_of(st.none(), st.floats(0, 70, allow_nan=False)),
        st.one_of(st.none(), st.integers(0, 10_000)),
        st.one_of(st.none(), st.integers(0, 10_000)),
        st.one_of(st.none(), st.floats(0, 5, allow_nan=False)),
    ),
    max_size=30,
)


def _reference(calls: list[tuple]) -> bytes:  # type: ignore[type-arg]
    r = CollectorRegistry()
    requests = Counter("flywheel_requests_total", "Proxied GenAI calls.", [*_CALL, "status_class"], registry=r)
    duration = Histogram(
        "flywheel_request_duration_seconds",
        "Whole call, from the app's request to the end of the answer.",
        _CALL,
        buckets=_LATENCY_BUCKETS,
        registry=r,
    )
    ttfc = Histogram(
        "flywheel_time_to_first_chunk_seconds",
        "Streams: from the app's request to the first chunk relayed.",
        _CALL,
        buckets=_TTFC_BUCKETS,
        registry=r,
    )
    tokens = Counter("flywheel_tokens_total", "Tokens by type (input, output).", [*_CALL, "type"], registry=r)
    cost = Counter("flywheel_cost_usd_total", "Cost in USD from litellm's price table.", _CALL, registry=r)
    for labels, status_class, seconds, first, inputs, outputs, usd in calls:
        requests.labels(*labels, status_class).inc()
        duration.labels(*labels).observe(seconds)
        ttfc_child = ttfc.labels(*labels)
        if first is not None:
            ttfc_child.observe(first)
        tokens.labels(*labels, "input").inc(inputs or 0)
        tokens.labels(*labels, "output").inc(outputs or 0)
        cost.labels(*labels).inc(usd or 0)
    return generate_latest(r)


def _without_created(exposition: bytes) -> tuple[list[bytes], list[bytes]]:
    """Headers in order, samples sorted (the order of children is no part of the format)."""
    lines = [line for line in exposition.splitlines() if b"_created" not in line]
    return [line for line in lines if line.startswith(b"#")], sorted(line for line in lines if line[:1] != b"#")


@settings(max_examples=100, deadline=None)
@given(calls=CALLS)
def test_call_series_read_as_prometheus_client_writes_them(calls: list[tuple]) -> None:  # type: ignore[type-arg]
    metrics = ProxyMetrics()
    for labels, *numbers in calls:
        metrics.series(*labels).record(*numbers)
    ours = metrics.exposition()
    per_call = ours.split(b"# HELP flywheel_schema_results_total")[0]
    assert _without_created(per_call) == _without_created(_reference(calls))
    series = {labels for labels, *_ in calls}
    # every child has its _created sample, as prometheus_client writes them
    assert per_call.count(b"flywheel_request_duration_seconds_created{") == len(series)
    assert per_call.count(b"flywheel_tokens_created{") == 2 * len(series)


def test_a_name_clash_is_refused() -> None:
    metrics = ProxyMetrics()
    try:
        Counter("flywheel_requests_total", "again", registry=metrics.registry)
    except ValueError:
        return
    raise AssertionError("a second flywheel_requests_total was registered")
