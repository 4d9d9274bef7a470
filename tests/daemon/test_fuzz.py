"""Fuzzing the wire contract: whatever a client sends, each call ends with a documented status.

One live ``kqd serve`` (its log captured) receives every RPC of ``kqd.v1.KQueueService`` through
the raw generated stub, with out-of-range and malformed fields: huge, negative and malformed
Durations, huge max_events and max_batch, idents, pids and fds at every integer boundary,
filters beyond 16 bits, unknown filters, flags beyond 16 bits, udata around 64 KiB, 10,000 and
10,001 changes, garbage queue ids, resume points beyond the last, odd paths and addresses.

The contract checked (proto/kqd/v1/kqd.proto, header comment):

- every call ends with OK or a status the proto documents; never UNKNOWN (an unhandled
  exception) and never INTERNAL (a daemon bug); where the proto names the status for an input
  (max_events over 10,000, a negative Duration, udata over 64 KiB, an unknown queue, ...) it is
  exactly that one;
- every call ends promptly (each is bounded by a gRPC deadline, which no input may reach except
  a wait the request asked for); a Wait stream with bad input fails at once, one with good input
  sends its first message at once;
- afterwards the daemon's log has no traceback and no ERROR line, and once the queues the
  fuzzer created are closed the daemon holds no more descriptors than before the run.

Hypothesis runs derandomized (the same examples on every run) and bounded, for CI.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from kqclient import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_DELETE,
    KQ_EV_DISABLE,
    KQ_EV_DISPATCH,
    KQ_EV_ENABLE,
    KQ_EV_EOF,
    KQ_EV_ERROR,
    KQ_EV_KEEPUDATA,
    KQ_EV_ONESHOT,
    KQ_EV_RECEIPT,
    KQ_FILTER_PROC,
    KQ_FILTER_READ,
    KQ_FILTER_SIGNAL,
    KQ_FILTER_TIMER,
    KQ_FILTER_USER,
    KQ_FILTER_VNODE,
    KQ_FILTER_WRITE,
    KQ_NOTE_ABSTIME,
    KQ_NOTE_EXIT,
    KQ_NOTE_FFCOPY,
    KQ_NOTE_FORK,
    KQ_NOTE_NSECONDS,
    KQ_NOTE_SECONDS,
    KQ_NOTE_TRIGGER,
    KQ_NOTE_WRITE,
)

from kqd.v1 import kqd_pb2, kqd_pb2_grpc
from tests.conftest import WAIT_BOUND, Daemon, start_daemon

Code: TypeAlias = grpc.StatusCode

# The statuses the proto documents for a daemon that is not shutting down (UNAVAILABLE is only
# for shutdown, INTERNAL is a bug, UNKNOWN an unhandled exception: none may appear here).
DOCUMENTED = frozenset(
    {
        Code.OK,
        Code.INVALID_ARGUMENT,
        Code.RESOURCE_EXHAUSTED,
        Code.NOT_FOUND,
        Code.PERMISSION_DENIED,
        Code.FAILED_PRECONDITION,
        Code.DEADLINE_EXCEEDED,
        Code.OUT_OF_RANGE,
    }
)
CALL_BOUND = 5.0  # seconds: the deadline of every call; no bad input may take this long
EXAMPLES = 200
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

MAX_UDATA = 64 * 1024
GRPC_MAX_MESSAGE = 4 * 1024 * 1024  # gRPC's default limit on a received message
MAX_LIST = 10_000  # changes per call, max_events, max_batch
ARMED_IDENT = 0xC0FFEE  # a level-triggered USER knote kept triggered: valid waits return at once
MANY_BASE = 10**12  # idents of the 10,000-change lists, apart from everything else
DURATION_MAX_SECONDS = 315_576_000_000

U64 = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
I64 = [0, 1, -1, 2**31, -(2**31), 2**62, -(2**62), 2**63 - 1, -(2**63)]
I32 = [0, 1, -1, 2**15 - 1, 2**15, -(2**15), -(2**15) - 1, 2**31 - 1, -(2**31)]
U32 = [0, 1, 0xFFFF, 0x10000, 0xFFFFFF, 0x1000000, 2**31, 2**32 - 1]
KNOWN_FILTERS = [
    KQ_FILTER_READ,
    KQ_FILTER_WRITE,
    KQ_FILTER_VNODE,
    KQ_FILTER_PROC,
    KQ_FILTER_SIGNAL,
    KQ_FILTER_TIMER,
    KQ_FILTER_USER,
]
UNKNOWN_FILTERS = [0, 1, -3, -8, -9, -10, -12, -13, -30]
FLAG_SETS = [
    0,
    KQ_EV_ADD,
    KQ_EV_ADD | KQ_EV_CLEAR,
    KQ_EV_ADD | KQ_EV_ONESHOT,
    KQ_EV_ADD | KQ_EV_DISPATCH,
    KQ_EV_ADD | KQ_EV_RECEIPT,
    KQ_EV_ADD | KQ_EV_KEEPUDATA,
    KQ_EV_ADD | KQ_EV_DISABLE,
    KQ_EV_DELETE,
    KQ_EV_ENABLE,
    KQ_EV_DISABLE,
    KQ_EV_ERROR,
    KQ_EV_EOF,
    KQ_EV_ADD | KQ_EV_DELETE,
    0xFFFF,
]
FFLAG_SETS = [
    0,
    KQ_NOTE_TRIGGER,
    KQ_NOTE_FFCOPY | 0xFFFFFF,
    KQ_NOTE_EXIT,
    KQ_NOTE_EXIT | KQ_NOTE_FORK,
    KQ_NOTE_SECONDS,
    KQ_NOTE_NSECONDS,
    KQ_NOTE_ABSTIME,
    KQ_NOTE_WRITE,
    2**32 - 1,
]
UDATA = [b"", b"u", b"\x00" * 16, b"x" * MAX_UDATA, b"x" * (MAX_UDATA + 1), b"x" * (1 << 20)]
SIGNALS_TO_AVOID = {  # a knote would chain a handler into the daemon's own dispositions
    int(signal.SIGTERM),
    int(signal.SIGINT),
    int(signal.SIGSEGV),
    int(signal.SIGBUS),
    int(signal.SIGFPE),
    int(signal.SIGILL),
    int(signal.SIGABRT),
}


def _mostly(
    usual: st.SearchStrategy[int], boundaries: list[int], low: int, high: int
) -> st.SearchStrategy[int]:
    """*usual* values half the time, else a boundary of the wire type or any value of it."""
    choices = [usual, usual, st.sampled_from(boundaries), st.integers(low, high)]
    return st.integers(0, 3).flatmap(choices.__getitem__)


def durations() -> st.SearchStrategy[Duration]:
    """Durations valid, negative, huge (seconds up to +-2^63) and malformed (nanos beyond
    +-999,999,999, or of the other sign)."""
    seconds = _mostly(
        st.integers(0, 2),
        [-1, 2**62, -(2**62), DURATION_MAX_SECONDS, DURATION_MAX_SECONDS + 1, *I64],
        -(2**63),
        2**63 - 1,
    )
    nanos = _mostly(
        st.sampled_from([0, 1, 1_000_000]) | st.integers(0, 999_999_999),
        [-1, 999_999_999, 1_000_000_000, -1_000_000_000, 2**31 - 1, -(2**31)],
        -(2**31),
        2**31 - 1,
    )
    return st.builds(Duration, seconds=seconds, nanos=nanos)


def duration_seconds(value: Duration) -> float | None:
    """*value* in seconds, or None when the proto calls it negative or malformed."""
    seconds, nanos = value.seconds, value.nanos
    if abs(seconds) > DURATION_MAX_SECONDS or abs(nanos) > 999_999_999:
        return None
    if (seconds < 0 < nanos) or (nanos < 0 < seconds):
        return None  # the signs must agree (google.protobuf.Duration)
    total = seconds + nanos / 1e9
    return None if total < 0 else total


class Fuzz:
    """The daemon under fuzz and what the fuzzer made on it."""

    def __init__(
        self,
        daemon: Daemon,
        stub: kqd_pb2_grpc.KQueueServiceStub,
        queue_id: str,
        fds: list[int],
        listeners: list[str],
        log: list[str],
        drainer: threading.Thread,
        baseline: dict[str, str],
    ) -> None:
        self.daemon = daemon
        self.stub = stub
        self.queue_id = queue_id  # the queue every RPC but CloseQueue works on
        self.fds = fds  # descriptors of its table: idents worth trying for READ/WRITE/VNODE
        self.listeners = listeners  # addresses this process listens on (TCP and Unix)
        self.log = log  # the daemon's log lines, read by *drainer* until it exits
        self.drainer = drainer
        self.baseline = baseline  # the daemon's descriptors after warm-up: fd -> what it names
        self.created = [queue_id]  # queues to close at the end
        self.calls = 0

    def __repr__(self) -> str:  # shown in Hypothesis's falsifying examples: keep it short
        return f"Fuzz(queue {self.queue_id[:6]}…, {self.calls} calls)"

    def call(self, method: str, request: Any, timeout: float = CALL_BOUND) -> tuple[Code, str]:
        """Call *method*; its status and details, after checking it ended within its bound."""
        self.calls += 1
        start = time.monotonic()
        try:
            response = getattr(self.stub, method)(request, timeout=timeout)
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]
        else:
            if method == "CreateQueue":
                self.created.append(response.queue_id)
            code, details = Code.OK, ""
        assert time.monotonic() - start < timeout + 1.0, f"{method} ignored its deadline"
        return code, details


def daemon_descriptors(pid: int) -> dict[str, str]:
    """The daemon's open descriptors: number -> what it names."""
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            out[name] = os.readlink(f"/proc/{pid}/fd/{name}")
    return out


def _drain(stream: Any, into: list[str]) -> None:
    for line in stream:
        into.append(line)


def _warm_up(stub: kqd_pb2_grpc.KQueueServiceStub, path: Path, addresses: list[str]) -> None:
    """Make the daemon create what it keeps for its whole life (the inotify instance, the proc
    connector, anything it opens or connects with), so that the baseline count of its
    descriptors already includes them."""
    queue_id = stub.CreateQueue(kqd_pb2.CreateQueueRequest(), timeout=CALL_BOUND).queue_id
    file_fd = stub.Open(kqd_pb2.OpenRequest(queue_id=queue_id, path=str(path))).fd
    conn_fd = 0
    for address in addresses:
        conn_fd = stub.OpenConnection(
            kqd_pb2.OpenConnectionRequest(queue_id=queue_id, address=address)
        ).fd
    changes = [
        kqd_pb2.Kevent(ident=file_fd, filter=KQ_FILTER_VNODE, flags=KQ_EV_ADD, fflags=0x7F),
        kqd_pb2.Kevent(ident=conn_fd, filter=KQ_FILTER_WRITE, flags=KQ_EV_ADD),
        kqd_pb2.Kevent(
            ident=os.getpid(),
            filter=KQ_FILTER_PROC,
            flags=KQ_EV_ADD,
            fflags=KQ_NOTE_EXIT | KQ_NOTE_FORK,
        ),
        kqd_pb2.Kevent(ident=1, filter=KQ_FILTER_TIMER, flags=KQ_EV_ADD, data=1000),
        kqd_pb2.Kevent(ident=int(signal.SIGUSR2), filter=KQ_FILTER_SIGNAL, flags=KQ_EV_ADD),
    ]
    stub.Register(kqd_pb2.RegisterRequest(queue_id=queue_id, changes=changes), timeout=CALL_BOUND)
    wait = stub.Wait(kqd_pb2.WaitRequest(queue_id=queue_id), timeout=CALL_BOUND)
    next(wait)
    wait.cancel()
    stub.CloseQueue(kqd_pb2.CloseQueueRequest(queue_id=queue_id), timeout=CALL_BOUND)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    """A daemon with debug logging, a shared queue holding a file and a connection, and the
    daemon's descriptor baseline, taken after a warm-up."""
    directory = tmp_path_factory.mktemp("fuzz")
    watched = directory / "watched"
    watched.write_bytes(b"some bytes")
    # Quotas high enough that the fuzzer's thousands of calls test input handling, not quotas
    # (tests/security covers those).
    policy = directory / "policy.toml"
    policy.write_text(
        "[defaults.quotas]\nqueues = 100000\nchanges_per_second = 100000000\n"
        "min_timer_period_ms = 0\n"
    )
    daemon = start_daemon(directory, "--policy", str(policy), log_level="debug")
    log: list[str] = []
    drainer = threading.Thread(target=_drain, args=(daemon.process.stderr, log), daemon=True)
    drainer.start()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    unix_listener = socket.socket(socket.AF_UNIX)
    unix_listener.bind(str(directory / "listener.sock"))
    unix_listener.listen()
    addresses = [f"127.0.0.1:{port}", f"unix:{directory / 'listener.sock'}"]
    channel = grpc.insecure_channel(daemon.target)
    try:
        stub = kqd_pb2_grpc.KQueueServiceStub(channel)
        _warm_up(stub, watched, addresses)
        baseline = daemon_descriptors(daemon.process.pid)
        queue_id = stub.CreateQueue(kqd_pb2.CreateQueueRequest(), timeout=CALL_BOUND).queue_id
        fds = [
            stub.Open(kqd_pb2.OpenRequest(queue_id=queue_id, path=str(watched))).fd,
            stub.Open(kqd_pb2.OpenRequest(queue_id=queue_id, path=str(directory))).fd,
            *(
                stub.OpenConnection(
                    kqd_pb2.OpenConnectionRequest(queue_id=queue_id, address=address)
                ).fd
                for address in addresses
            ),
        ]
        state = Fuzz(daemon, stub, queue_id, fds, addresses, log, drainer, baseline)
        yield state
    finally:
        channel.close()
        listener.close()
        unix_listener.close()
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(WAIT_BOUND)
        drainer.join(WAIT_BOUND)


# ---------------------------------------------------------------------------------- strategies


BAD_QUEUE_IDS = st.one_of(
    st.sampled_from(["", " ", "\x00", "é" * 300, "A" * 32, "../" * 20]),
    st.text(max_size=40),
)


def draw_queue(data: st.DataObject, real: str) -> str:
    """*real* three times in four, else an id no queue has (garbage, empty, one of its
    neighbours)."""
    if data.draw(st.integers(0, 3), label="real queue") > 0:
        return real
    return data.draw(st.one_of(BAD_QUEUE_IDS, st.sampled_from([real[:-1], real + "x"])))


def kevents(fuzz: Fuzz) -> st.SearchStrategy[kqd_pb2.Kevent]:
    """Kevents mostly in range (so that they reach the core), with every field at its
    boundaries and beyond now and then."""
    idents = _mostly(
        st.sampled_from([*fuzz.fds, os.getpid(), fuzz.daemon.process.pid, 1, 7])
        | st.integers(0, 64).filter(lambda n: n not in SIGNALS_TO_AVOID),
        U64,
        0,
        2**64 - 1,
    )
    return st.builds(
        kqd_pb2.Kevent,
        ident=idents,
        filter=_mostly(
            st.sampled_from(KNOWN_FILTERS) | st.sampled_from(UNKNOWN_FILTERS),
            I32,
            -(2**31),
            2**31 - 1,
        ),
        flags=_mostly(st.sampled_from(FLAG_SETS) | st.integers(0, 0xFFFF), U32, 0, 2**32 - 1),
        fflags=_mostly(st.sampled_from(FFLAG_SETS), U32, 0, 2**32 - 1),
        data=_mostly(st.integers(-2, 10**6), I64, -(2**63), 2**63 - 1),
        udata=st.one_of(st.binary(max_size=32), st.binary(max_size=32), st.sampled_from(UDATA)),
    )


def _many(count: int) -> list[kqd_pb2.Kevent]:
    return [
        kqd_pb2.Kevent(ident=MANY_BASE + i, filter=KQ_FILTER_USER, flags=KQ_EV_ADD | KQ_EV_CLEAR)
        for i in range(count)
    ]


MANY_OK, MANY_TOO_MANY = _many(MAX_LIST), _many(MAX_LIST + 1)


def changelists(fuzz: Fuzz) -> st.SearchStrategy[list[kqd_pb2.Kevent]]:
    return st.one_of(
        st.lists(kevents(fuzz), max_size=6),
        st.sampled_from([MANY_OK, MANY_TOO_MANY]),
    )


def change_problem(change: kqd_pb2.Kevent) -> bool:
    """Does the proto make this change an INVALID_ARGUMENT of the whole call?"""
    return (
        len(change.udata) > MAX_UDATA
        or not -(2**15) <= change.filter < 2**15
        or change.flags > 0xFFFF
    )


def describe(request: Any) -> str:
    """A request, readable in a failure message (long lists and udata cut)."""
    text = str(request).replace("\n", " ")
    return text if len(text) < 600 else text[:600] + "…"


def check(code: Code, details: str, request: Any, allowed: frozenset[Code] = DOCUMENTED) -> None:
    """*code* is allowed (a request over gRPC's message limit may only be refused with
    RESOURCE_EXHAUSTED), and comes with a message unless OK; counted for
    ``--hypothesis-show-statistics``."""
    if request.ByteSize() > GRPC_MAX_MESSAGE:
        allowed = exactly(Code.RESOURCE_EXHAUSTED)
    if currently_in_test_context():
        event(f"{type(request).__name__}: {code.name}")
    assert code in allowed, (
        f"{code.name} ({details!r}) for {describe(request)}; allowed: "
        f"{sorted(c.name for c in allowed)}"
    )
    if code != Code.OK:
        assert details, f"{code.name} without a message for {describe(request)}"


def exactly(code: Code) -> frozenset[Code]:
    return frozenset({code})


def known(queue_id: str, fuzz: Fuzz) -> bool:
    return queue_id == fuzz.queue_id


# ---------------------------------------------------------------------------------- the RPCs


@FUZZ_SETTINGS
@given(lease=st.none() | durations())
def test_create_queue(fuzz: Fuzz, lease: Duration | None) -> None:
    """A negative or malformed lease is INVALID_ARGUMENT; any other is granted (clamped)."""
    request = kqd_pb2.CreateQueueRequest(lease=lease)
    code, details = fuzz.call("CreateQueue", request)
    valid = lease is None or duration_seconds(lease) is not None
    check(code, details, request, exactly(Code.OK if valid else Code.INVALID_ARGUMENT))


@FUZZ_SETTINGS
@given(data=st.data())
def test_close_queue(fuzz: Fuzz, data: st.DataObject) -> None:
    """Closing a queue twice, or one that never existed, is NOT_FOUND."""
    fresh = fuzz.stub.CreateQueue(kqd_pb2.CreateQueueRequest(), timeout=CALL_BOUND).queue_id
    fuzz.created.append(fresh)
    queue_id = draw_queue(data, fresh)
    request = kqd_pb2.CloseQueueRequest(queue_id=queue_id)
    code, details = fuzz.call("CloseQueue", request)
    check(code, details, request, exactly(Code.OK if queue_id == fresh else Code.NOT_FOUND))
    if queue_id == fresh:
        code, details = fuzz.call("CloseQueue", request)
        check(code, details, request, exactly(Code.NOT_FOUND))


def _receipts_expected(fuzz: Fuzz, queue_id: str, changes: list[kqd_pb2.Kevent]) -> Code:
    if not known(queue_id, fuzz):
        return Code.NOT_FOUND
    if len(changes) > MAX_LIST:
        return Code.RESOURCE_EXHAUSTED
    if any(change_problem(c) for c in changes):
        return Code.INVALID_ARGUMENT
    return Code.OK


@FUZZ_SETTINGS
@given(data=st.data())
def test_register(fuzz: Fuzz, data: st.DataObject) -> None:
    """Register answers one receipt per change (EV_ERROR, data 0 or the errno), or fails the
    call with the status the proto names for the input."""
    queue_id = draw_queue(data, fuzz.queue_id)
    changes = data.draw(changelists(fuzz))
    request = kqd_pb2.RegisterRequest(queue_id=queue_id, changes=changes)
    try:
        response = fuzz.stub.Register(request, timeout=CALL_BOUND)
    except grpc.RpcError as error:
        code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]
        receipts = None
    else:
        code, details, receipts = Code.OK, "", list(response.receipts)
    check(code, details, request, exactly(_receipts_expected(fuzz, queue_id, changes)))
    if receipts is not None:
        assert len(receipts) == len(changes), "one receipt per change"
        for change, receipt in zip(changes, receipts, strict=True):
            assert (receipt.ident, receipt.filter) == (change.ident, change.filter)
            assert receipt.flags & KQ_EV_ERROR and receipt.data >= 0, str(receipt)


@FUZZ_SETTINGS
@given(data=st.data())
def test_unregister(fuzz: Fuzz, data: st.DataObject) -> None:
    """Unregister is Register with EV_DELETE added: the same receipts and statuses."""
    queue_id = draw_queue(data, fuzz.queue_id)
    changes = data.draw(changelists(fuzz))
    request = kqd_pb2.UnregisterRequest(queue_id=queue_id, changes=changes)
    code, details = fuzz.call("Unregister", request)
    check(code, details, request, exactly(_receipts_expected(fuzz, queue_id, changes)))


@FUZZ_SETTINGS
@given(data=st.data())
def test_session(fuzz: Fuzz, data: st.DataObject) -> None:
    """A Session on an unknown queue ends NOT_FOUND at once; on a known one, each changelist
    gets one reply with its tag: the receipts, or the status Register would have ended with
    (the session going on)."""
    queue_id = draw_queue(data, fuzz.queue_id)
    lists = data.draw(st.lists(changelists(fuzz), max_size=3))
    start = kqd_pb2.SessionRequest(start=kqd_pb2.WaitRequest(queue_id=queue_id))
    requests = [start] + [
        kqd_pb2.SessionRequest(changes=kqd_pb2.SessionChanges(tag=tag, changes=changes))
        for tag, changes in enumerate(lists, start=1)
    ]
    fuzz.calls += 1
    call = fuzz.stub.Session(iter(requests), timeout=CALL_BOUND)
    replies = {}
    try:
        for response in call:
            if response.HasField("receipts"):
                replies[response.receipts.tag] = response.receipts
                if len(replies) == len(lists):
                    break
            elif not lists:
                break
    except grpc.RpcError as error:
        code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]
        check(code, details, start, exactly(_receipts_expected(fuzz, queue_id, [])))
        return
    finally:
        call.cancel()
    assert known(queue_id, fuzz), "a Session on an unknown queue must fail"
    for tag, changes in enumerate(lists, start=1):
        expected = _receipts_expected(fuzz, queue_id, changes)
        reply = replies[tag]
        got = Code.OK if reply.code == 0 else next(c for c in Code if c.value[0] == reply.code)
        check(got, reply.message, reply, exactly(expected))
        assert len(reply.receipts) == (len(changes) if expected == Code.OK else 0), str(reply)


def _arm(fuzz: Fuzz) -> None:
    """Keep a level-triggered USER knote triggered on the shared queue: a valid Kevent that
    waits returns at once instead of running into its deadline."""
    armed = kqd_pb2.Kevent(
        ident=ARMED_IDENT,
        filter=KQ_FILTER_USER,
        flags=KQ_EV_ADD | KQ_EV_ENABLE,
        fflags=KQ_NOTE_TRIGGER,
    )
    request = kqd_pb2.RegisterRequest(queue_id=fuzz.queue_id, changes=[armed])
    assert fuzz.stub.Register(request, timeout=CALL_BOUND).receipts[0].data == 0


@FUZZ_SETTINGS
@given(
    data=st.data(),
    max_events=_mostly(
        st.integers(0, 16), [0, 1, MAX_LIST, MAX_LIST + 1, 2**31, 2**32 - 1], 0, 2**32 - 1
    ),
    timeout=st.none() | durations(),
)
def test_kevent(fuzz: Fuzz, data: st.DataObject, max_events: int, timeout: Duration | None) -> None:
    """Kevent: out-of-range max_events or timeout, bad changes and unknown queues fail with
    their status; anything else returns (events, EV_ERROR entries) or, with no room for an
    error, fails with the errno's status. Only a wait the request asked for may reach the
    call's deadline."""
    queue_id = draw_queue(data, fuzz.queue_id)
    changes = data.draw(changelists(fuzz))
    _arm(fuzz)
    request = kqd_pb2.KeventRequest(
        queue_id=queue_id, changes=changes, max_events=max_events, timeout=timeout
    )
    code, details = fuzz.call("Kevent", request)
    wait = None if timeout is None else duration_seconds(timeout)
    if max_events > MAX_LIST or (timeout is not None and wait is None):
        allowed = exactly(Code.INVALID_ARGUMENT)
    elif not known(queue_id, fuzz):
        allowed = exactly(Code.NOT_FOUND)
    elif len(changes) > MAX_LIST:
        allowed = exactly(Code.RESOURCE_EXHAUSTED)
    elif any(change_problem(c) for c in changes):
        allowed = exactly(Code.INVALID_ARGUMENT)
    else:
        allowed = DOCUMENTED - {Code.OUT_OF_RANGE}
        # Were the armed knote disarmed by the changes, the call would wait as asked.
        if max_events > 0 and (wait is None or wait >= CALL_BOUND - 1):
            allowed |= {Code.DEADLINE_EXCEEDED}
    check(code, details, request, allowed)


@FUZZ_SETTINGS
@given(
    data=st.data(),
    after=_mostly(st.integers(0, 64), [0, 1, 2**31, 2**32, 2**63, 2**64 - 1], 0, 2**64 - 1),
    max_batch=_mostly(st.integers(0, 16), [MAX_LIST, MAX_LIST + 1, 2**32 - 1], 0, 2**32 - 1),
)
def test_wait(fuzz: Fuzz, data: st.DataObject, after: int, max_batch: int) -> None:
    """A Wait with bad input fails at once (NOT_FOUND, INVALID_ARGUMENT for a resume point
    beyond the last, OUT_OF_RANGE for one no longer kept); with good input its first message
    arrives at once, and the client may cancel it then."""
    queue_id = draw_queue(data, fuzz.queue_id)
    request = kqd_pb2.WaitRequest(queue_id=queue_id, after_sequence=after, max_batch=max_batch)
    fuzz.calls += 1
    start = time.monotonic()
    stream = fuzz.stub.Wait(request, timeout=CALL_BOUND)
    try:
        first = next(stream)
    except grpc.RpcError as error:
        code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]
    except StopIteration:
        pytest.fail(f"Wait ended without a message or an error for {describe(request)}")
    else:
        code, details = Code.OK, ""
        assert len(first.events) <= (max_batch or 512), "max_batch is respected"
        stream.cancel()
    elapsed = time.monotonic() - start
    assert elapsed < CALL_BOUND / 2, f"Wait took {elapsed:.1f}s to answer {describe(request)}"
    if not known(queue_id, fuzz):
        allowed = exactly(Code.NOT_FOUND)
    elif after >= 2**31:  # far beyond anything this run delivers
        allowed = exactly(Code.INVALID_ARGUMENT)
    else:
        allowed = frozenset({Code.OK, Code.INVALID_ARGUMENT, Code.OUT_OF_RANGE})
    check(code, details, request, allowed)


OPEN_PATHS = [
    "",
    "\x00",
    "a\x00b",
    "/",
    ".",
    "/dev/null",
    "/proc/self/status",
    "/nonexistent/kqd-fuzz",
    "/" + "a" * 5000,
    "/tmp/" + "b" * 300,
    "/" + "c/" * 3000,
]


@FUZZ_SETTINGS
@given(data=st.data(), path=st.one_of(st.sampled_from(OPEN_PATHS), st.text(max_size=64)))
def test_open(fuzz: Fuzz, data: st.DataObject, path: str) -> None:
    """Open: INVALID_ARGUMENT for a path that is not absolute (checked first, as every
    argument), NOT_FOUND for a missing path or queue, INVALID_ARGUMENT for a path no file can
    have (a NUL byte, too long), PERMISSION_DENIED where the host refuses."""
    queue_id = draw_queue(data, fuzz.queue_id)
    request = kqd_pb2.OpenRequest(queue_id=queue_id, path=path)
    code, details = fuzz.call("Open", request)
    if not path.startswith("/"):
        allowed = exactly(Code.INVALID_ARGUMENT)
    elif not known(queue_id, fuzz):
        allowed = exactly(Code.NOT_FOUND)
    elif "\x00" in path:
        allowed = exactly(Code.INVALID_ARGUMENT)
    else:
        allowed = DOCUMENTED - {Code.OUT_OF_RANGE}
    check(code, details, request, allowed)


@FUZZ_SETTINGS
@given(
    data=st.data(),
    pid=_mostly(st.integers(0, 2**22), [0, 1, 2**22, 2**31 - 1, *U64], 0, 2**64 - 1),
    fd=_mostly(st.integers(0, 64), [0, 1, 2, 1023, *U64], 0, 2**64 - 1),
)
def test_open_peer_fd(fuzz: Fuzz, data: st.DataObject, pid: int, fd: int) -> None:
    """OpenPeerFd: a pid or fd out of range is INVALID_ARGUMENT; a process or descriptor that
    does not exist, or one the host will not share, fails with its errno's status."""
    pid = data.draw(st.sampled_from([pid, os.getpid(), fuzz.daemon.process.pid]))
    queue_id = draw_queue(data, fuzz.queue_id)
    request = kqd_pb2.OpenPeerFdRequest(queue_id=queue_id, pid=pid, fd=fd)
    code, details = fuzz.call("OpenPeerFd", request)
    if not 0 < pid < 2**31 or fd >= 2**31:
        allowed = exactly(Code.INVALID_ARGUMENT)
    elif not known(queue_id, fuzz):
        allowed = exactly(Code.NOT_FOUND)
    else:
        allowed = DOCUMENTED - {Code.OUT_OF_RANGE}
    check(code, details, request, allowed)


def _addresses(fuzz: Fuzz) -> st.SearchStrategy[str]:
    """Addresses that never leave this host: loopback, bad syntax, Unix paths, and text without
    a colon (never a host:port, so nothing is resolved through DNS)."""
    fixed = [
        *fuzz.listeners,
        "host:99999",
        ":",
        ":80",
        "unix:",
        "unix:/",
        "unix:///nonexistent/kqd.sock",
        "unix:" + "/x" * 100,
        "unix:a\x00b",
        "[::1]:0",
        "[::1]",
        "::1",
        "127.0.0.1:0",
        "127.0.0.1:1",
        "localhost:" + fuzz.listeners[0].rpartition(":")[2],
        "127.0.0.1:65535",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:²",
        "127.0.0.1:٣",
        "127.0.0.1: 80",
        "127.0.0.1:+80",
        "127.0.0.1:" + "9" * 400,
        "a\x00b:80",
        "",
        "\x00",
    ]
    return st.one_of(
        st.sampled_from(fixed),
        st.text(max_size=40).filter(lambda t: ":" not in t),
        st.text(max_size=40).map(lambda t: "unix:/" + t),
    )


def usable(address: str) -> bool:
    """Is *address* unix:/path (at most 107 bytes, no NUL) or host:port (an ASCII port of
    0..65535) with a host that resolves? (The only hosts the fuzzer sends with a valid port are
    127.0.0.1, ::1 and localhost.)"""
    if "\x00" in address:
        return False
    if address.startswith("unix:"):
        path = address.removeprefix("unix:").removeprefix("//")
        return 0 < len(path.encode()) <= 107
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    well_formed = port.isascii() and port.isdigit() and int(port) <= 65535
    return well_formed and host in ("127.0.0.1", "::1", "localhost")


@FUZZ_SETTINGS
@given(data=st.data())
def test_open_connection(fuzz: Fuzz, data: st.DataObject) -> None:
    """OpenConnection: an address that is not host:port (port 0..65535) or unix:/path, or whose
    host does not resolve, is INVALID_ARGUMENT (checked before the queue); a good one gives a
    descriptor even when the connect will fail (WRITE then reports EV_EOF with the errno)."""
    queue_id = draw_queue(data, fuzz.queue_id)
    address = data.draw(_addresses(fuzz))
    request = kqd_pb2.OpenConnectionRequest(queue_id=queue_id, address=address)
    code, details = fuzz.call("OpenConnection", request)
    if not usable(address):
        allowed = exactly(Code.INVALID_ARGUMENT)
    elif not known(queue_id, fuzz):
        allowed = exactly(Code.NOT_FOUND)
    else:
        allowed = DOCUMENTED - {Code.OUT_OF_RANGE}
    check(code, details, request, allowed)


def _close_descriptor(fuzz: Fuzz, request: Any) -> tuple[Code, str, dict[str, str]]:
    """CloseDescriptor's status, details and trailing metadata."""
    fuzz.calls += 1
    try:
        fuzz.stub.CloseDescriptor(request, timeout=CALL_BOUND)
    except grpc.RpcError as error:
        trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
        return error.code(), error.details() or "", trailers  # type: ignore[attr-defined]
    return Code.OK, "", {}


@FUZZ_SETTINGS
@given(
    data=st.data(),
    fd=_mostly(st.integers(0, 64), [0, 1, 2, 1023, *U64], 0, 2**64 - 1),
    fresh=st.booleans(),
)
def test_close_descriptor(fuzz: Fuzz, data: st.DataObject, fd: int, fresh: bool) -> None:
    """CloseDescriptor closes a descriptor of the queue's table once; one not in the table is
    NOT_FOUND with errno EBADF in the trailers."""
    queue_id = draw_queue(data, fuzz.queue_id)
    if fresh:  # a descriptor the queue has, to close (twice)
        opened = kqd_pb2.OpenRequest(queue_id=fuzz.queue_id, path="/dev/null")
        fd = fuzz.stub.Open(opened, timeout=CALL_BOUND).fd
    request = kqd_pb2.CloseDescriptorRequest(queue_id=queue_id, fd=fd)
    code, details, trailers = _close_descriptor(fuzz, request)
    if not known(queue_id, fuzz):
        check(code, details, request, exactly(Code.NOT_FOUND))
        return
    if fresh:
        check(code, details, request, exactly(Code.OK))
        code, details, trailers = _close_descriptor(fuzz, request)
        check(code, details, request, exactly(Code.NOT_FOUND))
    else:  # an fd the fuzzer opened in an earlier example may be closed here
        check(code, details, request, frozenset({Code.OK, Code.NOT_FOUND}))
    if code == Code.NOT_FOUND:
        assert trailers.get("kqd-errno") == "9", f"EBADF in the trailers: {trailers}"


def test_unresolvable_host_is_invalid_argument(fuzz: Fuzz) -> None:
    """A host name that does not resolve is INVALID_ARGUMENT naming it. (The bound leaves room
    for a resolver that cannot reach its name server: glibc tries 5 s, twice, by default.)"""
    address = "no-such-host.invalid:80"
    request = kqd_pb2.OpenConnectionRequest(queue_id=fuzz.queue_id, address=address)
    code, details = fuzz.call("OpenConnection", request, timeout=3 * WAIT_BOUND)
    check(code, details, request, exactly(Code.INVALID_ARGUMENT))
    assert "no-such-host.invalid" in details


def test_oversized_message_is_resource_exhausted(fuzz: Fuzz) -> None:
    """A request beyond gRPC's 4 MiB message limit is refused with RESOURCE_EXHAUSTED."""
    changes = [kqd_pb2.Kevent(ident=1, filter=KQ_FILTER_USER, udata=b"x" * MAX_UDATA)] * 80
    request = kqd_pb2.RegisterRequest(queue_id=fuzz.queue_id, changes=changes)
    assert request.ByteSize() > GRPC_MAX_MESSAGE
    code, details = fuzz.call("Register", request)
    check(code, details, request, exactly(Code.RESOURCE_EXHAUSTED))


def test_zz_daemon_log_clean_and_descriptors_released(fuzz: Fuzz) -> None:
    """After the run (this test comes last in the module): once every queue the fuzzer made is
    closed, the daemon holds no more descriptors than at the baseline; after it stops, its log
    has no traceback and no ERROR line, and it exited with status 0."""
    for queue_id in fuzz.created:
        code, details = fuzz.call("CloseQueue", kqd_pb2.CloseQueueRequest(queue_id=queue_id))
        assert code in (Code.OK, Code.NOT_FOUND), f"CloseQueue: {code.name} {details}"
    pid = fuzz.daemon.process.pid
    deadline = time.monotonic() + WAIT_BOUND
    while len(now := daemon_descriptors(pid)) > len(fuzz.baseline):
        if time.monotonic() > deadline:
            extra = {fd: what for fd, what in now.items() if fuzz.baseline.get(fd) != what}
            pytest.fail(
                f"the daemon holds {len(now)} descriptors, {len(fuzz.baseline)} before the "
                f"fuzz run; new ones: {extra}"
            )
        time.sleep(0.05)  # polling /proc: the bound above fails the test
    assert fuzz.daemon.stop() == 0, "kqd serve did not exit cleanly after the fuzz run"
    fuzz.drainer.join(WAIT_BOUND)
    log = "".join(fuzz.log)
    bad = [line for line in fuzz.log if "Traceback" in line or " ERROR " in line]
    assert not bad, f"the daemon logged errors during the fuzz run:\n{''.join(bad)}\n{log[-4000:]}"
    assert "kqd stopped" in log, f"the log ends before the daemon stopped: {log[-2000:]}"
