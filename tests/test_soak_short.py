"""A 20-second run of the soak benchmark (bench/soak.py; the real one runs 10 minutes
outside CI): the proxy as a process under mixed steady load loses no call and no span."""

from __future__ import annotations

import shutil

import pytest

from bench.soak import run


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs Debian's nginx as the upstream")
def test_short_soak_loses_nothing() -> None:
    result = run(minutes=1 / 3, rate=100, concurrency=8, warm_up=5)
    assert result["failures"] == 0, result["failure_kinds"]
    assert result["calls_ok"] == result["sent"] >= 1500
    assert result["streams_ok"] >= result["sent"] // 2 - 1
    assert result["feedback_ok"] > 0
    assert result["dropped_spans"] == 0
    assert result["spans_lost"] == 0
    assert result["spans_read_back"] == {"call": result["calls_ok"], "feedback": result["feedback_ok"]}
