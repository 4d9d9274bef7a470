"""The Session stream (proto/kqd/v1/kqd.proto, SessionRequest), from the proto alone and through
kqclient; and Wait's packed form.

- Raw: receipts carry their tag; a changelist's receipts come before the events it caused; a
  changelist refused whole gets its status in the reply and the session goes on; a session that
  does not start with ``start``, or starts twice, ends INVALID_ARGUMENT; a client that
  half-closes keeps receiving events.
- Packed Wait responses carry the same events and numbers as the per-event form.
- kqclient: ``register()`` while ``stream()`` runs goes through the session, from the consumer
  between two events and from another thread; closing the stream ends the daemon's call.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator

import grpc
import kqclient
import pytest
from kqclient import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_KEEPUDATA,
    KQ_FILTER_USER,
    KQ_NOTE_TRIGGER,
    aio,
    kevent,
)

from kqd.v1 import kqd_pb2, kqd_pb2_grpc
from kqd.wire import sequenced_from_wire, to_wire
from tests.conftest import WAIT_BOUND


def user_add(ident: int, udata: bytes = b"") -> kqd_pb2.Kevent:
    return to_wire(kevent(ident, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR, 0, 0, udata))


def trigger(ident: int) -> kqd_pb2.Kevent:
    return to_wire(kevent(ident, KQ_FILTER_USER, KQ_EV_KEEPUDATA, KQ_NOTE_TRIGGER))


class RawSession:
    """A Session call made from the generated stubs only, as a client in another language
    would: requests put on a queue, responses read with a bound."""

    def __init__(self, stub: kqd_pb2_grpc.KQueueServiceStub, first: kqd_pb2.SessionRequest):
        self.requests: queue.SimpleQueue[kqd_pb2.SessionRequest | None] = queue.SimpleQueue()
        self.requests.put(first)
        self.call = stub.Session(iter(self.requests.get, None), timeout=WAIT_BOUND)

    def send(self, tag: int, changes: list[kqd_pb2.Kevent]) -> None:
        changelist = kqd_pb2.SessionChanges(tag=tag, changes=changes)
        self.requests.put(kqd_pb2.SessionRequest(changes=changelist))

    def half_close(self) -> None:
        self.requests.put(None)

    def next(self) -> kqd_pb2.SessionResponse:
        return next(self.call)

    def next_with_events(self) -> kqd_pb2.WaitResponse:
        while True:
            response = self.next()
            if response.HasField("events") and sequenced_from_wire(response.events)[2]:
                return response.events


@pytest.fixture
def stub(daemon_target: str) -> Iterator[kqd_pb2_grpc.KQueueServiceStub]:
    with grpc.insecure_channel(daemon_target) as channel:
        yield kqd_pb2_grpc.KQueueServiceStub(channel)


@pytest.fixture
def queue_id(stub: kqd_pb2_grpc.KQueueServiceStub) -> Iterator[str]:
    queue_id = stub.CreateQueue(kqd_pb2.CreateQueueRequest()).queue_id
    yield queue_id
    stub.CloseQueue(kqd_pb2.CloseQueueRequest(queue_id=queue_id))


def start(queue_id: str, packed: bool = False) -> kqd_pb2.SessionRequest:
    return kqd_pb2.SessionRequest(start=kqd_pb2.WaitRequest(queue_id=queue_id, packed=packed))


@pytest.mark.parametrize("packed", [False, True], ids=["per-event", "packed"])
def test_receipts_come_before_the_events_they_cause(stub, queue_id, packed) -> None:
    session = RawSession(stub, start(queue_id, packed))
    first = session.next()
    assert first.HasField("events") and first.events.last_sequence == 0, first
    session.send(7, [user_add(1, b"one"), user_add(2, b"two")])
    session.send(8, [trigger(1), trigger(2)])
    replies = [session.next(), session.next()]
    assert [r.receipts.tag for r in replies] == [7, 8], replies
    for reply in replies:
        assert reply.receipts.code == 0 and [r.data for r in reply.receipts.receipts] == [0, 0]
    events = session.next_with_events()
    assert events.HasField("packed") == packed, events
    first_sequence, last, got = sequenced_from_wire(events)
    assert (first_sequence, last) == (1, 2), events
    assert sorted((ev.ident, ev.udata) for ev in got) == [(1, b"one"), (2, b"two")]
    session.call.cancel()


def test_a_refused_changelist_gets_its_status_and_the_session_goes_on(stub, queue_id) -> None:
    session = RawSession(stub, start(queue_id))
    session.next()
    session.send(1, [user_add(1, b"x" * (64 * 1024 + 1))])  # udata over the limit
    session.send(2, [user_add(2)] * 10_001)  # over 10,000 changes
    session.send(3, [user_add(3), trigger(3), trigger(99)])
    refused_udata, refused_count, applied = session.next(), session.next(), session.next()
    assert refused_udata.receipts.tag == 1 and not refused_udata.receipts.receipts
    assert refused_udata.receipts.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "udata" in refused_udata.receipts.message, refused_udata
    assert refused_count.receipts.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "10000" in refused_count.receipts.message.replace(",", ""), refused_count
    assert applied.receipts.tag == 3 and applied.receipts.code == 0
    assert [r.data for r in applied.receipts.receipts] == [0, 0, 2], applied  # ENOENT: no 99
    events = session.next_with_events()
    assert [ev.ident for ev in sequenced_from_wire(events)[2]] == [3]  # nothing of 1 or 2
    session.call.cancel()


def test_a_client_that_half_closes_keeps_receiving(stub, queue_id) -> None:
    session = RawSession(stub, start(queue_id))
    session.next()
    session.send(1, [user_add(5)])
    session.half_close()
    assert session.next().receipts.tag == 1
    stub.Register(kqd_pb2.RegisterRequest(queue_id=queue_id, changes=[trigger(5)]))
    assert [ev.ident for ev in sequenced_from_wire(session.next_with_events())[2]] == [5]
    session.call.cancel()


@pytest.mark.parametrize("opening", ["changes first", "start twice", "nothing"])
def test_a_session_must_start_with_start_once(stub, queue_id, opening) -> None:
    changes = kqd_pb2.SessionRequest(changes=kqd_pb2.SessionChanges(tag=1))
    first = {"changes first": changes, "start twice": start(queue_id), "nothing": None}[opening]
    requests = [first, start(queue_id)] if opening == "start twice" else [first]
    call = stub.Session(iter([r for r in requests if r is not None]), timeout=WAIT_BOUND)
    with pytest.raises(grpc.RpcError) as failure:
        for _ in call:
            pass
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failure.value
    assert "start" in failure.value.details()


def test_packed_and_per_event_waits_agree(stub, queue_id) -> None:
    stub.Register(
        kqd_pb2.RegisterRequest(
            queue_id=queue_id, changes=[user_add(i, bytes([i])) for i in range(1, 41)]
        )
    )
    stub.Register(
        kqd_pb2.RegisterRequest(queue_id=queue_id, changes=[trigger(i) for i in range(1, 41)])
    )
    seen = {}
    for packed in (False, True):
        request = kqd_pb2.WaitRequest(queue_id=queue_id, packed=packed, max_batch=16)
        got: list[tuple[int, bytes]] = []
        for response in stub.Wait(request, timeout=WAIT_BOUND):
            first, last, events = sequenced_from_wire(response)
            assert not events or last == first + len(events) - 1
            got += [(first + i, ev.udata) for i, ev in enumerate(events)]
            if len(got) == 40:
                break
        seen[packed] = got
    assert seen[False] == seen[True] and [s for s, _ in seen[True]] == list(range(1, 41))


def test_register_during_a_stream_goes_through_its_session(daemon_target: str) -> None:
    with kqclient.connect(daemon_target) as client, client.kqueue() as kq:
        kq.register([kevent(1, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR, udata=b"first")])
        kq.register([kevent(1, KQ_FILTER_USER, KQ_EV_KEEPUDATA, KQ_NOTE_TRIGGER)])
        stream = kq.stream()
        assert next(stream).udata == b"first"
        assert kq._session is not None, "stream() runs on a Session"
        # From the consumer itself, between two events: it reads its own receipts.
        receipts = kq.register(
            [kevent(2, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR, udata=b"second")]
        )
        assert [r.data for r in receipts] == [0]
        # From another thread, while the consumer waits in the stream.
        result: list = []
        helper = threading.Thread(
            target=lambda: result.append(
                kq.register([kevent(2, KQ_FILTER_USER, KQ_EV_KEEPUDATA, KQ_NOTE_TRIGGER)])
            )
        )
        helper.start()
        assert next(stream).udata == b"second"
        helper.join(WAIT_BOUND)
        assert [r.data for r in result[0]] == [0], result
        # A refused changelist raises what Register would, and the stream goes on.
        with pytest.raises(ValueError, match="udata"):
            kq.register([kevent(3, KQ_FILTER_USER, KQ_EV_ADD, udata=b"x" * (64 * 1024 + 1))])
        kq.register([kevent(1, KQ_FILTER_USER, KQ_EV_KEEPUDATA, KQ_NOTE_TRIGGER)])
        assert next(stream).udata == b"first" and kq.last_sequence == 3
        stream.close()
        assert kq._session is None, "closing the stream ends its session"
        receipts = kq.register(
            [kevent(2, KQ_FILTER_USER, KQ_EV_KEEPUDATA, KQ_NOTE_TRIGGER)]
        )  # unary again
        assert [r.data for r in receipts] == [0]


def test_asyncio_register_during_a_stream_goes_through_its_session(daemon_target: str) -> None:
    async def scenario() -> None:
        async with aio.connect(daemon_target) as client:
            kq = await client.kqueue()
            flags = KQ_EV_ADD | KQ_EV_CLEAR
            await kq.register([kevent(1, KQ_FILTER_USER, flags, udata=b"first")])
            await kq.register([kevent(1, KQ_FILTER_USER, KQ_EV_KEEPUDATA, KQ_NOTE_TRIGGER)])
            stream = kq.stream()
            assert (await anext(stream)).udata == b"first"
            assert kq._session is not None, "stream() runs on a Session"
            receipts = await kq.register([kevent(2, KQ_FILTER_USER, flags, udata=b"second")])
            assert [r.data for r in receipts] == [0]
            waiting = asyncio.ensure_future(anext(stream))
            trigger = kevent(2, KQ_FILTER_USER, KQ_EV_KEEPUDATA, KQ_NOTE_TRIGGER)
            assert [r.data for r in await kq.register([trigger])] == [0]
            assert (await asyncio.wait_for(waiting, WAIT_BOUND)).udata == b"second"
            with pytest.raises(ValueError, match="udata"):
                await kq.register([kevent(3, KQ_FILTER_USER, flags, udata=b"x" * 65537)])
            await stream.aclose()
            assert kq._session is None, "closing the stream ends its session"
            assert [r.data for r in await kq.register([trigger])] == [0]  # unary again
            await kq.close()

    asyncio.run(asyncio.wait_for(scenario(), WAIT_BOUND))
