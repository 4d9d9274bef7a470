"""Bad input gets a precise error and changes nothing; the daemon lives on."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import grpc
import kqclient
import pytest
from kqclient import KQ_EV_ADD, KQ_EV_ERROR, KQ_FILTER_READ, KQ_FILTER_USER, kevent

from kqd.v1 import kqd_pb2, kqd_pb2_grpc


@pytest.fixture
def client(daemon_target: str) -> Iterator[kqclient.Client]:
    with kqclient.connect(daemon_target) as c:
        yield c


@pytest.fixture
def stub(daemon_target: str) -> Iterator[kqd_pb2_grpc.KQueueServiceStub]:
    with grpc.insecure_channel(daemon_target) as channel:
        yield kqd_pb2_grpc.KQueueServiceStub(channel)


def test_unknown_queue_is_not_found(client, stub) -> None:
    with pytest.raises(kqclient.QueueNotFound, match="CreateQueue"):
        client.kqueue("no-such-queue").control(None, 1, 0)
    with pytest.raises(grpc.RpcError) as info:
        stub.Kevent(kqd_pb2.KeventRequest(queue_id="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_queue_ids_are_long_and_distinct(client) -> None:
    ids = {client.kqueue().queue_id for _ in range(20)}
    assert len(ids) == 20 and all(len(i) >= 32 for i in ids)


def test_oversized_udata_is_invalid_argument(client, stub) -> None:
    kq = client.kqueue()
    with pytest.raises(ValueError, match="65536"):
        kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_ADD, udata=b"x" * (64 * 1024 + 1))], 0)
    kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_ADD, udata=b"x" * (64 * 1024))], 0)


def test_too_many_changes_is_resource_exhausted(client, stub) -> None:
    queue_id = client.kqueue().queue_id
    changes = [
        kqd_pb2.Kevent(ident=i, filter=KQ_FILTER_USER, flags=KQ_EV_ADD) for i in range(10_001)
    ]
    with pytest.raises(grpc.RpcError) as info:
        stub.Register(kqd_pb2.RegisterRequest(queue_id=queue_id, changes=changes))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "split" in info.value.details()


def test_filter_out_of_range_is_invalid_argument(client, stub) -> None:
    queue_id = client.kqueue().queue_id
    with pytest.raises(grpc.RpcError) as info:
        stub.Register(
            kqd_pb2.RegisterRequest(
                queue_id=queue_id, changes=[kqd_pb2.Kevent(ident=1, filter=-40000, flags=KQ_EV_ADD)]
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_register_answers_one_receipt_per_change(client) -> None:
    kq = client.kqueue()
    receipts = kq.register(
        [
            kevent(1, KQ_FILTER_USER, KQ_EV_ADD),
            kevent(2, KQ_FILTER_USER, 0),  # no such knote
            kevent(3, -30, KQ_EV_ADD),  # no such filter
        ]
    )
    assert [(r.ident, r.flags, r.data) for r in receipts] == [
        (1, KQ_EV_ERROR, 0),
        (2, KQ_EV_ERROR, errno.ENOENT),
        (3, KQ_EV_ERROR, errno.EINVAL),
    ]


def test_descriptor_idents_are_confined_to_the_queue(client) -> None:
    kq = client.kqueue()
    # Descriptors 0..63 of the daemon (its gRPC sockets among them) are not the queue's.
    errors = kq.control([kevent(fd, KQ_FILTER_READ, KQ_EV_ADD) for fd in range(64)], 64, 0)
    assert len(errors) == 64
    assert {(e.flags, e.data) for e in errors} == {(KQ_EV_ERROR, errno.EBADF)}
    assert [e.ident for e in errors] == list(range(64)), "errors keep the idents asked for"


def test_open_missing_path_is_file_not_found(client, tmp_path) -> None:
    kq = client.kqueue()
    with pytest.raises(FileNotFoundError):
        kq.open(str(tmp_path / "missing"))


def test_close_unknown_descriptor_is_ebadf(client) -> None:
    with pytest.raises(OSError) as info:
        client.kqueue().close_fd(12345)
    assert info.value.errno == errno.EBADF


def test_bad_connection_address_is_invalid_argument(client) -> None:
    with pytest.raises(ValueError, match="host:port"):
        client.kqueue().open_connection("no-port-here")


def test_no_room_for_an_error_raises_oserror_with_errno(client) -> None:
    with pytest.raises(OSError) as info:
        client.kqueue().control([kevent(5, KQ_FILTER_USER, 0)], 0)
    assert info.value.errno == errno.ENOENT


def test_daemon_survives_bad_input(client) -> None:
    kq = client.kqueue()
    kq.control([kevent(7, KQ_FILTER_USER, KQ_EV_ADD)], 0)
    assert kq.control(None, 1, 0) == []
    assert os.path.exists(client.target.removeprefix("unix://"))
