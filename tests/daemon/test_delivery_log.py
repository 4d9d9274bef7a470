"""The delivery log's bounds and resume rules."""

from __future__ import annotations

import pytest

from kqd.core import KQ_FILTER_USER, kevent
from kqd.daemon.delivery_log import DeliveryLog, ResumeTooOldError


def events(count: int, size: int = 0) -> list[kevent]:
    return [kevent(i, KQ_FILTER_USER, udata=b"x" * size) for i in range(count)]


def test_numbers_in_order_and_replays_after_a_point() -> None:
    log = DeliveryLog()
    batch = log.record(events(5))
    assert [s for s, _ in batch] == [1, 2, 3, 4, 5]
    assert [s for s, _ in log.after(2, 10)] == [3, 4, 5]
    assert [s for s, _ in log.after(2, 2)] == [3, 4]
    assert log.after(5, 10) == []


def test_count_bound_and_explicit_gap() -> None:
    log = DeliveryLog(capacity=3)
    log.record(events(5))
    assert [s for s, _ in log.after(2, 10)] == [3, 4, 5]
    with pytest.raises(ResumeTooOldError) as info:
        log.after(1, 10)
    assert info.value.oldest == 3


def test_byte_bound_keeps_memory_flat() -> None:
    log = DeliveryLog(max_bytes=100_000)
    for _ in range(100):
        log.record(events(10, size=64 * 1024))  # 64 MB of udata through the log
    kept = log.after(log.last_sequence - 1, 10)
    assert len(kept) == 1
    with pytest.raises(ResumeTooOldError):
        log.after(log.last_sequence - 3, 10)
