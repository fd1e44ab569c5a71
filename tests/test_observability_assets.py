"""The chart's alert rules and dashboards, proven against real Prometheus tools: every
rule checked and unit-tested with promtool, every dashboard query evaluated on a real
Prometheus scraping a real proxy under traffic."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson

from flywheel.registry import open_registry
from flywheel.registry.version import content_from_mapping
from tests.conftest import API_KEY, proxy_for
from tests.fake_upstream import FakeUpstream
from tests.test_prometheus import prometheus, query

CHART = Path(__file__).parent.parent / "helm" / "flywheel" / "files"
RULES = CHART / "rules" / "flywheel.rules.yaml"


def _promtool(*args: str, cwd: Path = RULES.parent) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool comes with Debian's prometheus (.ci/run installs it)"
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    checked = _promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    tested = _promtool("test", "rules", "flywheel.rules.test.yaml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_a_broken_rule_is_caught(tmp_path: Path) -> None:
    broken = RULES.read_text().replace(
        "flywheel_requests_total{status_class", "flywheel_requests_total{{status_class", 1
    )
    (tmp_path / RULES.name).write_text(broken)
    assert _promtool("check", "rules", RULES.name, cwd=tmp_path).returncode != 0


@contextlib.asynccontextmanager
async def schema_checked_proxy(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[str]:
    """A proxy whose prompt has a stable and a canary version, both with a response schema."""
    registry = open_registry(tmp_path / "registry")
    schema = {"type": "object", "required": ["answer"]}
    stable, _ = registry.push("support", content_from_mapping({"template": "Be brief.", "response_schema": schema}))
    canary, _ = registry.push("support", content_from_mapping({"template": "Be kind.", "response_schema": schema}))
    registry.set_rollout("support", stable=stable.hash, canary=canary.hash, weight=50)
    async with proxy_for(upstream, registry=registry) as proxy:
        yield proxy.url


def _dashboard_queries() -> list[tuple[str, str]]:
    found = []
    for path in sorted((CHART / "dashboards").glob("*.json")):
        dashboard = orjson.loads(path.read_bytes())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
    return found


def _concrete(expr: str) -> str:
    """Grafana's variables as Grafana would fill them for "All prompts, last minute"."""
    return expr.replace("$__rate_interval", "1m").replace('"$prompt"', '".*"')


async def test_every_dashboard_query_parses_and_returns_data(upstream: FakeUpstream, tmp_path: Path) -> None:
    queries = _dashboard_queries()
    assert len(queries) >= 12 and not [q for _, q in queries if re.search(r"\$(?!__rate_interval|prompt)", q)]
    async with schema_checked_proxy(upstream, tmp_path) as url:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0) as c:

            async def traffic() -> None:
                for i in range(30):
                    raw = await c.chat.completions.with_raw_response.create(
                        model="gpt-4o-mini",
                        messages=[{"role": "user", "content": "hi"}],
                        stream=i % 3 == 0,
                        extra_headers={"X-Prompt-Name": "support", "X-Prompt-Key": f"user-{i}"},
                    )
                    if i % 3 == 0:
                        _ = [chunk async for chunk in raw.parse()]
                    async with aiohttp.ClientSession() as session:
                        body = {"request_id": raw.headers["X-Request-Id"], "thumbs": "up" if i % 4 else "down"}
                        async with session.post(url + "/v1/feedback", json=body) as r:
                            assert r.status == 202

            with prometheus(url.removeprefix("http://"), tmp_path) as base:
                from tests.test_prometheus import until_series

                await until_series(base, 'flywheel_requests_total{prompt="support"}', 0)
                await until_series(base, "flywheel_registry_prompts", 1)
                await traffic()
                await until_series(base, 'flywheel_feedback_total{prompt="support"}', 2)
                await traffic()  # a second round, so rate() sees counters move between scrapes
                await until_series(base, 'increase(flywheel_requests_total{prompt="support"}[1m]) > 0', 1)
                empty: list[str] = []
                async with aiohttp.ClientSession() as session:
                    for title, expr in queries:
                        result: list[Any] = await query(session, base, _concrete(expr))
                        if not result:
                            empty.append(f"{title}: {expr}")
    assert not empty, "queries with no data:\n" + "\n".join(empty)
