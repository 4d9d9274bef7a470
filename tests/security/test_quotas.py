"""Per-principal quotas (kqd/daemon/quotas.py): limits, releases, bills, the change bucket and
the daemon's descriptor budget. An injected clock drives the bucket: nothing here sleeps."""

from __future__ import annotations

import errno
import logging
import resource
import threading

import pytest

from kqd.daemon import quotas
from kqd.daemon.quotas import (
    KINDS,
    Accounts,
    DescriptorBudget,
    Kind,
    Limits,
    QuotaExceeded,
    Usage,
    raise_nofile_limit,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def accounts(clock: FakeClock) -> Accounts:
    return Accounts(DescriptorBudget(total=10_000), clock=clock)


@pytest.fixture
def alice(accounts: Accounts) -> Usage:
    return accounts.usage("uid:1000")


def test_defaults_are_the_documented_ones() -> None:
    assert Limits() == Limits(
        queues=1024,
        knotes=100_000,
        descriptors=1024,
        streams=64,
        udata_bytes=64 * 1024 * 1024,
        timers=1000,
        min_timer_period_ms=1,
        changes_per_second=200_000,
    )
    doc = quotas.__doc__ or ""
    for name in quotas.LIMIT_NAMES:
        assert name in doc, f"{name} is documented"
    assert Limits(knotes=7).of("knotes") == 7


def test_one_usage_per_principal(accounts: Accounts) -> None:
    assert accounts.usage("uid:1") is accounts.usage("uid:1")
    assert accounts.usage("uid:1") is not accounts.usage("uid:2")
    assert {u.name for u in accounts} == {"uid:1", "uid:2"}


@pytest.mark.parametrize("kind", KINDS)
def test_a_limit_hit_raises_with_a_message_that_says_what_to_do(alice: Usage, kind: Kind) -> None:
    alice.charge(kind, 3, 5)
    with pytest.raises(QuotaExceeded) as caught:
        alice.charge(kind, 3, 5)
    error = caught.value
    message = str(error)
    assert message.startswith(f"uid:1000 is over its {kind} quota: 3 in use, 3 more asked, limit 5")
    assert f"ask the operator to raise quotas.{kind} for uid:1000" in message
    assert "\n" not in message
    assert (error.principal, error.quota, error.limit, error.used, error.requested) == (
        "uid:1000",
        kind,
        5,
        3,
        3,
    )
    assert alice.used(kind) == 3, "a refused charge takes nothing"
    alice.charge(kind, 2, 5)
    assert alice.used(kind) == 5


def test_advice_is_specific(alice: Usage) -> None:
    with pytest.raises(QuotaExceeded, match=r"delete knotes you no longer need \(EV_DELETE\)"):
        alice.charge("knotes", 1, 0)
    with pytest.raises(QuotaExceeded, match=r"close queues you no longer need \(CloseQueue\)"):
        alice.charge("queues", 1, 0)
    with pytest.raises(QuotaExceeded) as caught:
        alice.charge("descriptors", 1, 0)
    assert caught.value.errno == errno.EMFILE
    assert "CloseDescriptor" in str(caught.value)


def test_large_numbers_are_readable(alice: Usage) -> None:
    alice.charge("knotes", 100_000, 100_000)
    with pytest.raises(QuotaExceeded, match="100,000 in use, 1 more asked, limit 100,000"):
        alice.charge("knotes", 1, 100_000)


def test_release_restores(alice: Usage) -> None:
    alice.charge("knotes", 10, 10)
    alice.release("knotes", 4)
    assert alice.used("knotes") == 6
    alice.charge("knotes", 4, 10)
    with pytest.raises(QuotaExceeded):
        alice.charge("knotes", 1, 10)


def test_releasing_more_than_charged_is_logged_and_stops_at_zero(
    alice: Usage, caplog: pytest.LogCaptureFixture
) -> None:
    alice.charge("timers", 2, 10)
    with caplog.at_level(logging.ERROR, logger="kqd.daemon"):
        alice.release("timers", 5)
    assert alice.used("timers") == 0
    assert "released 5 timers but only 2 charged" in caplog.text


def test_bad_arguments_are_bugs(alice: Usage) -> None:
    with pytest.raises(ValueError, match="negative"):
        alice.charge("knotes", -1, 10)
    with pytest.raises(ValueError, match="negative"):
        alice.release("knotes", -1)
    with pytest.raises(ValueError, match="unknown quota kind"):
        alice.charge("bogus", 1, 10)  # type: ignore[arg-type]


def test_a_lowered_limit_refuses_new_charges_and_takes_nothing_away(alice: Usage) -> None:
    alice.charge("queues", 10, 64)
    with pytest.raises(QuotaExceeded, match="10 in use, 1 more asked, limit 4"):
        alice.charge("queues", 1, 4)
    assert alice.used("queues") == 10
    alice.release("queues", 7)
    alice.charge("queues", 1, 4)


def test_principals_are_independent(accounts: Accounts) -> None:
    a, b = accounts.usage("uid:1"), accounts.usage("uid:2")
    a.charge("knotes", 5, 5)
    with pytest.raises(QuotaExceeded):
        a.charge("knotes", 1, 5)
    b.charge("knotes", 5, 5)


# --- Charging shapes that cannot leak -----------------------------------------------------------


def test_hold_keeps_the_charge_on_success_and_releases_on_failure(alice: Usage) -> None:
    with alice.hold("descriptors", 1, 10):
        pass
    assert alice.used("descriptors") == 1
    with pytest.raises(OSError), alice.hold("descriptors", 1, 10):
        raise OSError(errno.ENOENT, "no such file")
    assert alice.used("descriptors") == 1
    assert alice.daemon_fds == 1


def test_borrow_releases_at_the_end_however_it_ends(alice: Usage) -> None:
    with alice.borrow("streams", 1, 1):
        assert alice.used("streams") == 1
        with pytest.raises(QuotaExceeded):
            alice.charge("streams", 1, 1)
    assert alice.used("streams") == 0
    with pytest.raises(RuntimeError), alice.borrow("streams", 1, 1):
        raise RuntimeError("stream broken")
    assert alice.used("streams") == 0


def test_a_bill_commits_at_the_end_of_the_block(alice: Usage) -> None:
    with alice.bill() as bill:
        bill.charge("knotes", 2, 10)
        bill.charge("udata_bytes", 100, 1000)
    assert (alice.used("knotes"), alice.used("udata_bytes")) == (2, 100)


def test_a_bill_rolls_back_everything_when_the_block_raises(alice: Usage) -> None:
    alice.charge("knotes", 1, 10)
    with pytest.raises(QuotaExceeded), alice.bill() as bill:
        bill.charge("knotes", 2, 10)
        bill.charge("descriptors", 1, 10)
        bill.charge_daemon_fds(3)
        bill.charge("udata_bytes", 2000, 1000)  # over: the block ends here
    nothing: dict[str, int] = dict.fromkeys(KINDS, 0)
    assert alice.snapshot() == {**nothing, "knotes": 1, "daemon_fds": 0}


def test_a_bill_by_hand(alice: Usage) -> None:
    bill = alice.bill()
    bill.charge("timers", 1, 10)
    bill.rollback()
    assert alice.used("timers") == 0
    with pytest.raises(RuntimeError, match="already committed or rolled back"):
        bill.commit()
    bill = alice.bill()
    bill.charge("timers", 1, 10)
    bill.commit()
    with pytest.raises(RuntimeError):
        bill.charge("timers", 1, 10)
    assert alice.used("timers") == 1


def test_charges_from_many_threads_add_up(alice: Usage) -> None:
    def work() -> None:
        for _ in range(2000):
            with alice.bill() as bill:
                bill.charge("knotes", 1, 1_000_000)
                bill.charge("descriptors", 1, 1_000_000)
            alice.release("descriptors", 1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert alice.used("knotes") == 8000 and alice.used("descriptors") == 0
    assert alice.daemon_fds == 0


# --- The change bucket -------------------------------------------------------------------------


def test_the_bucket_starts_full_and_refuses_past_its_burst(alice: Usage, clock: FakeClock) -> None:
    alice.take_changes(1000, 1000)
    with pytest.raises(QuotaExceeded) as caught:
        alice.take_changes(1, 1000)
    error = caught.value
    assert error.quota == "changes_per_second" and error.limit == 1000
    assert error.errno == errno.EAGAIN
    assert error.retry_after == pytest.approx(0.001)
    assert "uid:1000 is over its changes_per_second quota: limit 1,000 per second" in str(error)
    assert "0 available now, 1 asked; retry in 0.001 s" in str(error)


def test_the_bucket_refills_with_time(alice: Usage, clock: FakeClock) -> None:
    alice.take_changes(1000, 1000)
    clock.now += 0.25
    alice.take_changes(250, 1000)
    with pytest.raises(QuotaExceeded):
        alice.take_changes(1, 1000)
    clock.now += 0.5
    with pytest.raises(QuotaExceeded) as caught:
        alice.take_changes(600, 1000)  # 500 there: refused, and nothing taken
    assert caught.value.retry_after == pytest.approx(0.1)
    alice.take_changes(500, 1000)


def test_the_bucket_never_holds_more_than_one_second(alice: Usage, clock: FakeClock) -> None:
    alice.take_changes(10, 100)
    clock.now += 3600
    alice.take_changes(100, 100)
    with pytest.raises(QuotaExceeded):
        alice.take_changes(1, 100)


def test_a_call_larger_than_the_burst_says_to_split_it(alice: Usage) -> None:
    with pytest.raises(QuotaExceeded, match="send at most 100 changes per call") as caught:
        alice.take_changes(101, 100)
    assert caught.value.retry_after is None
    alice.take_changes(100, 100)  # the refusal took nothing


def test_a_zero_rate_refuses_every_change(alice: Usage) -> None:
    alice.take_changes(0, 0)
    with pytest.raises(QuotaExceeded):
        alice.take_changes(1, 0)


def test_timer_periods(alice: Usage) -> None:
    alice.check_timer_period(1_000_000, 1)
    alice.check_timer_period(1, 0)
    with pytest.raises(
        QuotaExceeded, match=r"0\.5 ms is below uid:1000's min_timer_period_ms"
    ) as c:
        alice.check_timer_period(500_000, 1)
    assert c.value.errno == errno.EINVAL


# --- The daemon's descriptor budget ------------------------------------------------------------


def test_the_reserve_is_at_least_64_or_5_percent() -> None:
    small = DescriptorBudget(total=1024)
    assert (small.reserve, small.shareable, small.per_principal) == (64, 960, 480)
    large = DescriptorBudget(total=1_048_576)
    assert large.reserve == 52_428 and large.shareable == 1_048_576 - 52_428
    assert DescriptorBudget(total=10).shareable == 0
    assert DescriptorBudget(total=1000, reserve=100, principal_share=1).per_principal == 900


def test_the_default_budget_is_the_soft_rlimit() -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert DescriptorBudget().total == soft


def test_one_principal_cannot_take_more_than_its_share(clock: FakeClock) -> None:
    accounts = Accounts(DescriptorBudget(total=1024), clock=clock)
    alice = accounts.usage("uid:1000")
    alice.charge("descriptors", 400, 1024)
    alice.charge_daemon_fds(80)
    with pytest.raises(QuotaExceeded) as caught:
        alice.charge("descriptors", 1, 1024)
    error = caught.value
    assert error.quota == "daemon descriptors" and error.errno == errno.ENFILE
    assert "uid:1000 holds 480 of the daemon's descriptors and asks 1 more" in str(error)
    assert "at most 480 to one principal" in str(error)
    assert "64 kept for itself" in str(error)
    assert alice.used("descriptors") == 400, "the refused charge took nothing"
    accounts.usage("uid:1001").charge("descriptors", 10, 1024)  # others are not affected


def test_the_reserve_is_never_given_to_callers(clock: FakeClock) -> None:
    accounts = Accounts(DescriptorBudget(total=1024), clock=clock)
    a, b, c = (accounts.usage(f"uid:{n}") for n in (1, 2, 3))
    a.charge("descriptors", 480, 10_000)
    b.charge("descriptors", 480, 10_000)
    assert accounts.budget.used == 960
    with pytest.raises(QuotaExceeded, match="the daemon is out of descriptors for callers"):
        c.charge("descriptors", 1, 10_000)
    with pytest.raises(QuotaExceeded, match="out of descriptors"):
        c.charge_daemon_fds(1)
    c.charge("queues", 1, 64)  # other kinds still work
    assert c.used("descriptors") == 0 and c.daemon_fds == 0
    a.release("descriptors", 1)
    c.charge("descriptors", 1, 10_000)


def test_daemon_fds_are_released_to_the_budget(alice: Usage, accounts: Accounts) -> None:
    alice.charge_daemon_fds(3)
    alice.charge("descriptors", 2, 10)
    assert accounts.budget.used == 5 and alice.daemon_fds == 5
    alice.release_daemon_fds(3)
    alice.release("descriptors", 2)
    assert accounts.budget.used == 0 and alice.daemon_fds == 0


def test_raise_nofile_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"now": (1024, 4096)}
    monkeypatch.setattr(resource, "getrlimit", lambda _: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda _, value: limits.update(now=value))
    assert raise_nofile_limit() == 4096 and limits["now"] == (4096, 4096)

    def refuse(_: int, __: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    limits["now"] = (1024, 4096)
    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert raise_nofile_limit() == 1024
