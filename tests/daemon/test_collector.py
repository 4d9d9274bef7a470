"""The daemon's garbage-collector policy (server.Collector): a full collection walks only what
appeared since the last one, young cycles are still collected, and the safety valve reclaims
cycles among frozen objects once memory has doubled."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from kqd.daemon import server
from kqd.daemon.server import Collector


class Node:
    """A reference cycle with itself: only the cycle collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def collector() -> Iterator[Collector]:
    thresholds = gc.get_threshold()
    policy = Collector()
    policy.install()
    try:
        yield policy
    finally:
        policy.uninstall()
        assert gc.get_threshold() == thresholds, "uninstall gives the thresholds back"
        assert gc.get_freeze_count() == 0, "uninstall unfreezes"


def test_survivors_of_a_full_collection_are_frozen(collector: Collector) -> None:
    kept = [Node() for _ in range(1000)]
    frozen = gc.get_freeze_count()
    gc.collect()
    assert gc.get_freeze_count() >= frozen + len(kept)
    assert not gc.get_objects(generation=2), "the oldest generation is empty after it"


def test_young_cycles_are_still_collected(collector: Collector) -> None:
    gc.collect()
    node = Node()
    gone = weakref.ref(node)
    del node
    gc.collect(1)
    assert gone() is None, "a cycle that died young was not collected"


def test_the_valve_reclaims_frozen_cycles_once_memory_doubled(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Node()
    gone = weakref.ref(node)
    gc.collect()  # node survives: frozen
    del node
    gc.collect()
    assert gone() is not None, "a frozen cycle is left alone by full collections"
    assert not collector.maintain(), "not due: memory has not grown"
    monkeypatch.setattr(
        server, "resident_bytes", lambda: int(collector.baseline * 2 + Collector.VALVE_FLOOR_BYTES)
    )
    assert collector.maintain()
    assert gone() is None, "the valve's complete collection reclaimed it"
    assert collector.complete_collections == 1
