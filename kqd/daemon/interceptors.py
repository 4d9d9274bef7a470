"""What the daemon's server interceptors share: replacing a method handler's behaviour."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")

Behaviour = Callable[..., Any]


def rewrap(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Behaviour, str], Behaviour]
) -> grpc.RpcMethodHandler:
    """*handler* with its behaviour replaced by ``wrap(behaviour, kind)`` (kind: "unary_unary",
    "unary_stream", ...)."""
    kind = next(k for k in _KINDS if getattr(handler, k) is not None)
    return handler._replace(**{kind: wrap(getattr(handler, kind), kind)})
