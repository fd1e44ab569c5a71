"""A real Prometheus server (Debian's ``prometheus``) scrapes the proxy's ``/metrics`` and
the series split by prompt version and arm."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai

from flywheel.registry import open_registry
from flywheel.registry.version import content_from_mapping
from tests.conftest import API_KEY, proxy_for
from tests.fake_upstream import FakeUpstream
from tests.processes import debian_server


@contextlib.contextmanager
def prometheus(target: str, tmp: Path) -> Iterator[str]:
    config = tmp / "prometheus.yml"
    config.write_text(
        f"""global: {{scrape_interval: 1s, scrape_timeout: 900ms}}
scrape_configs:
  - job_name: flywheel
    static_configs: [{{targets: ["{target}"]}}]
"""
    )
    args = [f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}", "--web.listen-address=127.0.0.1:{port}"]
    with debian_server(("prometheus",), args) as url:
        yield url


async def query(session: aiohttp.ClientSession, base: str, promql: str) -> list[dict[str, Any]]:
    async with session.get(base + "/api/v1/query", params={"query": promql}) as r:
        body = await r.json()
    return body["data"]["result"]  # type: ignore[no-any-return]


async def until_series(base: str, promql: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """Prometheus scrapes every second; wait for the series to show up (bounded)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                result = await query(session, base, promql)
                if len(result) >= count:
                    return result
            except aiohttp.ClientError:
                result = []  # not listening yet
            assert time.monotonic() < deadline, f"{promql}: {result}"
            await asyncio.sleep(0.25)


@contextlib.asynccontextmanager
async def managed_proxy(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[tuple[str, str, str]]:
    registry = open_registry(tmp_path / "registry")
    stable, _ = registry.push("support", content_from_mapping({"template": "Be brief."}))
    canary, _ = registry.push("support", content_from_mapping({"template": "Be brief and kind."}))
    registry.set_rollout("support", stable=stable.hash, canary=canary.hash, weight=50)
    async with proxy_for(upstream, registry=registry) as proxy:
        yield proxy.url, stable.hash, canary.hash


async def test_prometheus_scrapes_series_by_version_and_arm(upstream: FakeUpstream, tmp_path: Path) -> None:
    async with managed_proxy(upstream, tmp_path) as (url, stable, canary):
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0) as c:
            for i in range(40):
                stream = i % 2 == 0
                result = await c.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "hi"}],
                    stream=stream,
                    extra_headers={"X-Prompt-Name": "support", "X-Prompt-Key": f"user-{i}"},
                )
                if stream:
                    _ = [chunk async for chunk in result]  # type: ignore[union-attr]
        with prometheus(url.removeprefix("http://"), tmp_path) as base:
            requests = await until_series(base, 'flywheel_requests_total{prompt="support"}', 2)
            by_arm = {r["metric"]["arm"]: (r["metric"]["version"], float(r["value"][1])) for r in requests}
            assert by_arm["stable"][0] == stable and by_arm["canary"][0] == canary
            assert sum(count for _, count in by_arm.values()) == 40
            assert {r["metric"]["status_class"] for r in requests} == {"2xx"}
            tokens = await until_series(base, 'sum by (arm, type) (flywheel_tokens_total{prompt="support"})', 4)
            assert {(t["metric"]["arm"], t["metric"]["type"]) for t in tokens} == {
                ("stable", "input"),
                ("stable", "output"),
                ("canary", "input"),
                ("canary", "output"),
            }
            cost = await until_series(base, 'sum(flywheel_cost_usd_total{prompt="support"})', 1)
            assert float(cost[0]["value"][1]) > 0
            ttfc = await until_series(base, 'flywheel_time_to_first_chunk_seconds_count{prompt="support"}', 2)
            assert sum(float(t["value"][1]) for t in ttfc) == 20
            p95 = await until_series(
                base,
                "histogram_quantile(0.95, sum by (le, arm) (rate(flywheel_request_duration_seconds_bucket[1m])))",
                2,
            )
            assert {p["metric"]["arm"] for p in p95} == {"stable", "canary"}
