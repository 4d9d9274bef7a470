"""RPC metrics: every call the server handles, by service, method and status code, and how long
the unary ones took.

``RpcMetricsInterceptor`` wraps each call's behaviour; it is the first interceptor of the server,
so it also sees calls that the identity interceptor refuses (UNAUTHENTICATED). Only methods the
server implements are counted (a call to an unknown method never reaches a behaviour), so the
label values are a fixed set, whatever clients send. Streaming calls (Wait, health Watch,
reflection) are counted when they end, with no latency: their length is the client's choice.
A unary call's latency is its handling time on the daemon, waits included (a Kevent call with a
timeout takes as long as it waits).

The tallies are plain numbers updated on the event loop thread, read at scrape time by
``metrics.DaemonCollector``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from kqd.daemon.interceptors import rewrap
from kqd.daemon.metrics_delivery import Histogram

#: Upper bounds (seconds) of the RPC latency buckets: 100 us to 60 s.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# A method's labels: (service, method), e.g. ("kqd.v1.KQueueService", "Register").
Method = tuple[str, str]


def _status(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    """The status a call ended with: what the handler set, CANCELLED when the call was
    cancelled under it, UNKNOWN for any other exception (gRPC's own answer to those)."""
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return grpc.StatusCode.OK.name if exc is None else grpc.StatusCode.UNKNOWN.name


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every handled call (``handled``) and times the unary ones (``latency``)."""

    def __init__(self) -> None:
        self.handled: Counter[tuple[str, str, str]] = Counter()  # (service, method, code)
        self.latency: dict[Method, Histogram] = {}

    def ended(self, service: str, method: str, code: str) -> int:
        """How many calls of *service*/*method* ended with status *code* (a name: "OK")."""
        return self.handled[(service, method, code)]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        service, _, method = details.method.lstrip("/").rpartition("/")
        return rewrap(
            handler,
            lambda behaviour, kind: self._wrap(behaviour, (service, method), kind == "unary_unary"),
        )

    def _wrap(
        self, behaviour: Callable[..., Any], method: Method, timed: bool
    ) -> Callable[..., Any]:
        histogram = None
        if timed:
            histogram = self.latency.get(method)
            if histogram is None:
                histogram = self.latency[method] = Histogram(LATENCY_BUCKETS)
        handled = self.handled

        if inspect.isasyncgenfunction(behaviour):

            async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
                try:
                    async for item in behaviour(request, context):
                        yield item
                except BaseException as exc:
                    handled[(*method, _status(context, exc))] += 1
                    raise
                handled[(*method, _status(context, None))] += 1

            return streaming

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                result = await behaviour(request, context)
            except BaseException as exc:
                handled[(*method, _status(context, exc))] += 1
                if histogram is not None:
                    histogram.observe(time.perf_counter() - start)
                raise
            handled[(*method, _status(context, None))] += 1
            if histogram is not None:
                histogram.observe(time.perf_counter() - start)
            return result

        return call
