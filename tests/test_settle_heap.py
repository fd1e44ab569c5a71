"""Once the proxy listens, start-up objects are frozen out of the cyclic collector and
young collections run less often (see ``proxy.server.settle_heap``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from proxy.server import settle_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_leave_the_collectors_sight() -> None:
    gc.unfreeze()
    settle_heap()
    assert gc.get_freeze_count() > 1000  # modules, classes, config: what start-up built
    assert gc.get_threshold()[0] == 10_000
    assert gc.get_count()[0] < 100  # a full collection ran first: nothing young left
