"""Keeping the proxy's :class:`PromptBook` in step with the registry (hot reload, SPEC §3).

The registry is polled off the event loop; a changed fingerprint means a reload, and
the new book replaces the old one in a single assignment, so a request sees either
the old or the new state, never a mix. A prompt whose files cannot be read keeps its
last good state; the proxy says so in its log and in ``flywheel_registry_errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Hashable

from flywheel.registry import Registry, RegistryError, Version
from proxy.metrics import ProxyMetrics
from proxy.prompts import ActivePrompt, PromptBook

log = logging.getLogger("flywheel.proxy")


class PromptWatcher:
    def __init__(self, registry: Registry, interval: float, metrics: ProxyMetrics) -> None:
        self.book = PromptBook()
        self._registry = registry
        self._interval = interval
        self._metrics = metrics
        self._fingerprint: Hashable = None
        self._task: asyncio.Task[None] | None = None
        self._versions: dict[str, list[Version]] = {}

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._watch(), name="flywheel-registry-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> bool:
        """Reload if the registry changed; True when it did."""
        fingerprint = await asyncio.to_thread(self._registry.store.fingerprint)
        if fingerprint == self._fingerprint:
            return False
        book, problems = await asyncio.to_thread(self._load)
        self.book = book
        self._fingerprint = fingerprint
        self._metrics.registry_prompts.set(len(book.prompts))
        self._metrics.registry_errors.set(len(problems))
        self._metrics.registry_reloads.labels("error" if problems else "ok").inc()
        log.info("registry: serving %d prompt(s)", len(book.prompts))
        for problem in problems:
            log.error("registry: %s; serving the last good state of that prompt", problem)
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except Exception:  # a watcher that dies would freeze the prompts silently
                log.exception("registry reload failed; serving the last good state")

    def _load(self) -> tuple[PromptBook, list[str]]:
        previous = self.book
        prompts: dict[str, ActivePrompt] = {}
        versions: dict[str, list[Version]] = {}
        problems: list[str] = []
        for name in self._registry.names():
            try:
                prompts[name], versions[name] = self._load_prompt(name)
            except RegistryError as exc:
                problems.append(f"prompt {name}: {exc}")
                if name in previous.prompts:
                    prompts[name] = previous.prompts[name]
                    versions[name] = self._versions.get(name, [])
        self._versions = versions
        return PromptBook.build(prompts, versions), problems

    def _load_prompt(self, name: str) -> tuple[ActivePrompt, list[Version]]:
        rollout = self._registry.rollout(name)
        versions = self._registry.versions(name)
        by_hash = {v.hash: v for v in versions}
        missing = [h for h in (rollout.stable, rollout.canary) if h is not None and h not in by_hash]
        if missing:
            raise RegistryError(f"rollout names version(s) {', '.join(missing)} that are not in the registry")
        canary = by_hash[rollout.canary] if rollout.canary else None
        return ActivePrompt(rollout, by_hash[rollout.stable], canary), versions
