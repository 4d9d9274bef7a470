"""Closing a queue of many knotes: over for everyone at the call, its knotes dropped over
several turns of the daemon's loop (RemoteQueue.close, Kqueue.close_in_steps).

At the call: waiting calls fail, the queue's descriptors and quotas are given back (a client
may register as many knotes again at once). Then a task drops the knotes, giving back the
daemon descriptors they and the kqueue hold as each is closed; other calls are served meanwhile.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import kqclient

from kqd.core import KQ_EV_ADD, KQ_EV_CLEAR, KQ_FILTER_TIMER, KQ_FILTER_USER, kevent
from kqd.daemon.admission import KnoteAdmission
from kqd.daemon.identity import Principal
from kqd.daemon.policy import Policy
from kqd.daemon.quotas import Accounts, DescriptorBudget
from kqd.daemon.remote_queue import QueueClosedError, RemoteQueue
from tests.conftest import WAIT_BOUND, start_daemon

KNOTES = 20_000
QUOTA = 25_000


def _users(count: int, udata: bytes = b"") -> list[kevent]:
    return [kevent(i, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR, 0, 0, udata) for i in range(count)]


def test_quotas_come_back_at_the_call_descriptors_as_they_close() -> None:
    async def scenario() -> None:
        accounts = Accounts(DescriptorBudget(total=100_000))
        usage = accounts.usage("uid:4242")
        usage.charge("queues", 1, 10)
        usage.charge_daemon_fds(RemoteQueue.OWN_DESCRIPTORS)
        queue = RemoteQueue(60.0, usage.name, usage)
        rules = Policy.default().for_principal(Principal(usage.name))
        queue.policy = KnoteAdmission(usage.name, lambda: rules, usage)
        timers = [kevent(i, KQ_FILTER_TIMER, KQ_EV_ADD, 0, 3_600_000) for i in range(10)]
        await queue.control([*_users(KNOTES, b"x" * 8), *timers], 0, 0)
        assert usage.used("knotes") == KNOTES + len(timers)
        waiter = asyncio.create_task(queue.control([], 1, None))
        await asyncio.sleep(0)  # the waiter is waiting

        queue.close("closed by the test")

        snapshot = usage.snapshot()
        assert snapshot["knotes"] == snapshot["udata_bytes"] == snapshot["timers"] == 0
        assert snapshot["queues"] == 0
        try:
            await asyncio.wait_for(waiter, WAIT_BOUND)
        except QueueClosedError:
            pass
        else:
            raise AssertionError("a call waiting on the queue did not fail at the close")
        assert usage.daemon_fds == RemoteQueue.OWN_DESCRIPTORS, "still held: not closed yet"
        for _ in range(100_000):  # the drop yields the loop between its slices
            if usage.daemon_fds == 0:
                break
            await asyncio.sleep(0)
        assert usage.daemon_fds == 0, "the kqueue's own descriptors were not given back"
        assert queue.kq.count_by_filter() == {}

    asyncio.run(asyncio.wait_for(scenario(), WAIT_BOUND))


def test_a_closed_queue_gives_its_knote_quota_back_at_once(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(f"[defaults.quotas]\nknotes = {QUOTA}\nchanges_per_second = 10000000\n")
    daemon = start_daemon(tmp_path, "--policy", str(policy))
    try:
        with kqclient.connect(daemon.target) as client:
            for _ in range(3):
                kq = client.kqueue()
                changes = _users(KNOTES)  # over the quota unless the last close gave it back
                for start in range(0, KNOTES, 10_000):  # the daemon's limit per call
                    kq.control(changes[start : start + 10_000], 0)
                other = client.kqueue()  # another call, served while the knotes are dropped
                other.close()
                kq.close()
    finally:
        assert daemon.stop() == 0
