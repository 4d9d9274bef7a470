"""gRPC statuses as the Python exceptions a kqueue user expects."""

from __future__ import annotations

import errno
import os

import grpc

from kqd.wire import ERRNO_KEY


class KqdError(Exception):
    """Base of kqclient's own exceptions."""


class DaemonUnavailable(KqdError, ConnectionError):  # noqa: N818 - reads as a state
    """The daemon cannot be reached (not running, wrong target, or shutting down)."""


class QueueNotFound(KqdError, LookupError):  # noqa: N818
    """The remote queue is gone: closed, its lease expired, or the daemon restarted."""


class ResumeGap(KqdError):  # noqa: N818
    """A stream cannot resume where asked: events in between are gone (see ``oldest``)."""

    def __init__(self, message: str, oldest: int | None) -> None:
        super().__init__(message)
        self.oldest = oldest


def _errno_of(error: grpc.RpcError) -> int | None:
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == ERRNO_KEY:
            return int(value)
    return None


def translate(error: grpc.RpcError, target: str) -> Exception:
    """The exception to raise for a failed call."""
    code = error.code()  # type: ignore[attr-defined]
    details = error.details() or code.name  # type: ignore[attr-defined]
    return exception_for(code, details, _errno_of(error), target)


def exception_for(code: grpc.StatusCode, details: str, err: int | None, target: str) -> Exception:
    """The exception for a status *code* with *details* and errno *err* (None: none given)."""
    if err is not None:
        return OSError(
            err, f"{details}" if os.strerror(err) in details else f"{os.strerror(err)}: {details}"
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return DaemonUnavailable(
            f"cannot reach kqd at {target} ({details}); is `kqd serve` running there? "
            "Set the address with --target or KQD_TARGET"
        )
    if code == grpc.StatusCode.NOT_FOUND:
        return QueueNotFound(details)
    if code == grpc.StatusCode.OUT_OF_RANGE:
        oldest = None
        marker = "the oldest event kept is "
        if marker in details:
            oldest = int(details.split(marker, 1)[1].split(";", 1)[0])
        return ResumeGap(details, oldest)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ValueError(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return OSError(errno.ENOBUFS, details)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionError(errno.EPERM, details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TimeoutError(details)
    return KqdError(f"{code.name}: {details}")
