"""What a test may check after abuse: nothing of the proxy's is left running."""

from __future__ import annotations

import asyncio
import time

from proxy.app import METRICS
from proxy.server import RunningProxy


async def settled(proxy: RunningProxy, baseline_tasks: int, timeout: float = 5) -> None:
    """Wait until no call is in flight and no task beyond ``baseline_tasks`` is alive; fail after ``timeout``.

    There is no event for "every task ended", so this checks every 10 ms, bounded.
    """
    metrics = proxy.app[METRICS]
    deadline = time.monotonic() + timeout
    while True:
        tasks = len(asyncio.all_tasks()) - 1  # minus this test's own task
        if metrics.in_flight == 0 and tasks <= baseline_tasks:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind: in_flight={metrics.in_flight}, tasks {tasks} > {baseline_tasks}")
        await asyncio.sleep(0.01)


def task_count() -> int:
    return len(asyncio.all_tasks()) - 1
