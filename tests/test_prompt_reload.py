"""Registry changes reach running proxies: within 2 s, under load with no failed request,
through a ConfigMap symlink swap, past corrupt files, and with sticky arms everywhere."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

import aiohttp
import pytest

from flywheel.registry import Registry, assign_arm, open_registry
from proxy.app import PROMPTS
from proxy.server import RunningProxy
from tests.configmap import ConfigMapVolume
from tests.conftest import proxy_for
from tests.fake_upstream import FakeUpstream
from tests.processes import flywheel_proxy
from tests.test_prompt_injection import ADOPTED, chat, post, push

V2 = "You are Acme's assistant. Be concise and precise."


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = open_registry(tmp_path / "registry")
    push(registry, "adopted", template=ADOPTED)
    return registry


async def _served(proxy_url: str, key: str) -> tuple[str, str]:
    status, headers, _ = await post(proxy_url, chat(ADOPTED), {"X-Prompt-Key": key})
    assert status == 200
    return headers["X-Prompt-Version"], headers["X-Prompt-Arm"]


async def _wait_until_served(proxy_url: str, version: str, limit: float = 2.0) -> float:
    """Seconds until a request gets ``version``; fails past ``limit``."""
    start = time.monotonic()
    while (await _served(proxy_url, "probe"))[0] != version:
        assert time.monotonic() - start < limit, f"{version} not served within {limit} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_changes_are_served_within_2s_under_load_with_no_failed_request(
    upstream: FakeUpstream, registry: Registry
) -> None:
    v1 = registry.rollout("adopted").stable
    v2 = push(registry, "adopted", template=V2)
    outcomes: list[int | str] = []
    stop = asyncio.Event()

    async def client(worker: int, url: str) -> None:
        async with aiohttp.ClientSession() as session:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    body = chat(ADOPTED, user=f"u{worker}-{i % 50}")
                    async with session.post(url + "/v1/chat/completions", json=body) as r:
                        await r.read()
                        outcomes.append(r.status)
                except aiohttp.ClientError as exc:
                    outcomes.append(type(exc).__name__)

    async with proxy_for(upstream, registry=registry, reload_interval=1.0) as proxy:
        clients = [asyncio.create_task(client(w, proxy.url)) for w in range(8)]
        delays = []
        registry.set_rollout("adopted", stable=v1, canary=v2, weight=100, reason="canary everyone")
        delays.append(await _wait_until_served(proxy.url, v2))
        registry.promote("adopted", reason="looks good")
        registry.set_rollout("adopted", stable=v2, canary=v1, weight=100)  # v1 back as a canary …
        delays.append(await _wait_until_served(proxy.url, v1))
        registry.rollback("adopted", reason="… and dropped again")
        delays.append(await _wait_until_served(proxy.url, v2))
        stop.set()
        await asyncio.gather(*clients)
    failed = [o for o in outcomes if o != 200]
    assert len(outcomes) > 200 and failed == [], failed[:5]
    assert max(delays) < 2.0, delays


async def test_configmap_symlink_swap_is_picked_up(upstream: FakeUpstream, registry: Registry, tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "mounted")
    volume.publish(registry.store.root)  # type: ignore[attr-defined]
    v1 = registry.rollout("adopted").stable
    async with proxy_for(upstream, registry=open_registry(volume.root), reload_interval=0.2) as proxy:
        assert (await _served(proxy.url, "k"))[0] == v1
        v2 = push(registry, "adopted", template=V2)
        registry.set_rollout("adopted", stable=v2, reason="new stable")
        volume.publish(registry.store.root, link_new_keys=False)  # type: ignore[attr-defined]
        assert await _wait_until_served(proxy.url, v2) < 2.0
        volume.finish([p.name for p in registry.store.root.iterdir() if not p.name.startswith(".")])  # type: ignore[attr-defined]
        assert (await _served(proxy.url, "k"))[0] == v2


async def _metric(proxy: RunningProxy, name: str) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/metrics") as r:
            text = await r.text()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exposed:\n{text}")


async def test_corrupt_file_keeps_the_last_good_state_and_says_so(
    upstream: FakeUpstream, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    root: Path = registry.store.root  # type: ignore[attr-defined]
    v1 = registry.rollout("adopted").stable
    async with proxy_for(upstream, registry=registry, reload_interval=60) as proxy:
        watcher = proxy.app[PROMPTS]
        assert await _metric(proxy, "flywheel_registry_errors") == 0
        good = (root / "adopted.rollout.json").read_bytes()
        (root / "adopted.rollout.json").write_bytes(good[: len(good) // 2])  # a torn, hand-edited file
        (root / "broken.rollout.json").write_text("{}")  # a prompt that never had a good state
        with caplog.at_level(logging.ERROR, logger="flywheel.proxy"):
            assert await watcher.refresh()
        assert (await _served(proxy.url, "k"))[0] == v1  # still served
        assert any("adopted" in r.getMessage() and "last good" in r.getMessage() for r in caplog.records)
        assert await _metric(proxy, "flywheel_registry_errors") == 2
        assert await _metric(proxy, 'flywheel_registry_reloads_total{result="error"}') == 1
        status, _, answer = await post(proxy.url, chat(), {"X-Prompt-Name": "broken"})
        assert status == 404 and answer["error"]["code"] == "prompt_not_found"

        (root / "adopted.rollout.json").write_bytes(good)
        (root / "broken.rollout.json").unlink()
        assert await watcher.refresh()
        assert await _metric(proxy, "flywheel_registry_errors") == 0
        assert await _metric(proxy, "flywheel_registry_prompts") == 1


async def test_rollout_naming_a_missing_version_keeps_the_last_good_state(
    upstream: FakeUpstream, registry: Registry
) -> None:
    root: Path = registry.store.root  # type: ignore[attr-defined]
    v1 = registry.rollout("adopted").stable
    async with proxy_for(upstream, registry=registry, reload_interval=60) as proxy:
        v2 = push(registry, "adopted", template=V2)
        registry.set_rollout("adopted", stable=v2)
        (root / f"adopted.v.{v2}.json").unlink()  # e.g. a ConfigMap edited by hand
        assert await proxy.app[PROMPTS].refresh()
        assert (await _served(proxy.url, "k"))[0] == v1


async def test_arms_are_sticky_across_processes_and_restarts(
    upstream: FakeUpstream, registry: Registry, tmp_path: Path
) -> None:
    v1 = registry.rollout("adopted").stable
    v2 = push(registry, "adopted", template=V2)
    rollout = registry.set_rollout("adopted", stable=v1, canary=v2, weight=30)
    keys = [f"customer-{i}" for i in range(300)]
    args = ("--upstream", upstream.url + "/v1", "--registry", str(registry.store.root))  # type: ignore[attr-defined]

    async def arms(url: str) -> list[str]:
        return [arm for _, arm in await asyncio.gather(*(_served(url, key) for key in keys))]

    async with flywheel_proxy(*args) as first, flywheel_proxy(*args) as second:
        seen_first, seen_second = await arms(first.url), await arms(second.url)
    async with flywheel_proxy(*args) as restarted:
        seen_restarted = await arms(restarted.url)
    expected = [assign_arm(rollout, key).value for key in keys]
    assert seen_first == seen_second == seen_restarted == expected
    assert 60 <= expected.count("canary") <= 120

    copy = tmp_path / "replica-registry"  # another replica's copy of the same rollout (e.g. a ConfigMap)
    shutil.copytree(registry.store.root, copy)  # type: ignore[attr-defined]
    async with flywheel_proxy("--upstream", upstream.url + "/v1", "--registry", str(copy)) as replica:
        assert await arms(replica.url) == expected
