"""The table that links feedback to recent calls is bounded and compact."""

from __future__ import annotations

import tracemalloc

from opentelemetry.trace import SpanContext, TraceFlags

from proxy.recent_calls import RecentCalls, Served


def _served(i: int) -> Served:
    return Served(
        SpanContext(2**127 + i, 2**63 + i, False, TraceFlags(1)),
        "support",
        "abc123def456",
        "canary",
        f"chatcmpl-{i:020d}",
    )


def test_keeps_the_newest_calls_only() -> None:
    recent = RecentCalls(capacity=3)
    for i in range(5):
        recent.remember(f"req_{i}", _served(i))
    assert len(recent) == 3
    assert recent.get("req_0") is None and recent.get("req_1") is None
    assert recent.get("req_4") == _served(4)  # the span context and labels come back whole


def test_zero_capacity_remembers_nothing() -> None:
    recent = RecentCalls(capacity=0)
    recent.remember("req_1", _served(1))
    assert recent.get("req_1") is None and len(recent) == 0


def test_memory_per_call_stays_small() -> None:
    """What the soak found: 480 bytes a call before; the bound is what caps RSS."""
    recent = RecentCalls(capacity=20_000)
    ids = [f"req_{i:024x}" for i in range(20_000)]
    served = [_served(i) for i in range(20_000)]
    tracemalloc.start()
    try:
        for request_id, one in zip(ids, served, strict=True):
            recent.remember(request_id, one)
        used = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert used / 20_000 < 300  # per call, ints and tuple included (ids and strings exist anyway)
