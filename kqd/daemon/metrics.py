"""Prometheus metrics of ``kqd serve``, read from the daemon's state at scrape time.

``kqd serve --metrics-listen ADDR`` serves ``GET /metrics`` on ADDR (``host:port``; a bare
``PORT`` or ``:PORT`` means loopback). The endpoint shows counts only: no queue id, path, pid or
principal name is ever a label value, so every series is one of a small fixed set whatever the
clients do (per-principal numbers are the admin service's, ``admin.py``).

Most numbers are not counted at all but read when a scrape asks (:class:`DaemonCollector`): the
queues and their knotes by filter (``Kqueue.count_by_filter``), the open Wait streams and the
descriptors held for callers (the quota accounts), what the delivery logs keep, the inotify and
proc-connector overflow counts. What leaves no state behind is counted where it happens, into
plain numbers on the event loop thread: events delivered and their latency
(``metrics_delivery.py``), RPCs by method and status (``metrics_rpc.py``). The endpoint itself
runs on the event loop too (:class:`MetricsEndpoint`, a minimal HTTP/1.1 server), so a scrape
reads the daemon between two steps of its work: no locks, a consistent snapshot, and nothing to
do for the daemon when nobody scrapes.

Series (``kqd_`` prefix, base units, ``_total`` counters; labels in braces):

==========================================  =====================================================
kqd_build_info{version}                     1, with the daemon's version
kqd_queues                                  queues open
kqd_knotes{filter}                          knotes registered, by filter
kqd_wait_streams                            Wait streams open
kqd_caller_descriptors                      descriptors the daemon holds for callers
kqd_caller_descriptors_limit                how many it gives callers at most, all together
process_open_fds, process_max_fds           the daemon's descriptors and RLIMIT_NOFILE (and the
                                            other process_* series of prometheus_client)
kqd_events_delivered_total{filter}          events sent by Wait streams, by filter
kqd_delivery_latency_seconds                histogram: core report to stream write, per event
kqd_stuck_streams_closed_total              streams closed after 60 s without a read
kqd_resume_log_events, _bytes               what the delivery logs keep for resuming
kqd_resume_refused_total                    Wait calls refused OUT_OF_RANGE (resume too old)
kqd_inotify_overflows_total                 inotify queue overflows
kqd_proc_connector_drops_total              proc connector receive overflows (ENOBUFS)
kqd_rpcs_total{service,method,code}         RPCs handled, by method and status code
kqd_rpc_duration_seconds{service,method}     histogram: handling time of unary RPCs
==========================================  =====================================================

``filter`` is one of read, write, vnode, proc, signal, timer, user; ``method`` one of the
methods the daemon serves; ``code`` a gRPC status name (OK, NOT_FOUND, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import resource
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from kqd.core.constants import FILTER_NAMES
from kqd.core.linux.filters import FILTERS
from kqd.core.linux.inotify_hub import InotifyHub
from kqd.core.linux.proc_connector import ProcConnector
from kqd.daemon.metrics_delivery import LATENCY_BUCKETS, Histogram, delivery
from kqd.daemon.metrics_rpc import RpcMetricsInterceptor

if TYPE_CHECKING:
    from kqd.daemon.service import KQueueService

log = logging.getLogger("kqd.daemon")

#: The kevent filters by label value, in the order they are listed.
FILTER_LABELS: dict[int, str] = {
    value: FILTER_NAMES[value].removeprefix("KQ_FILTER_").lower() for value in FILTERS
}
METRICS_PATH = "/metrics"
_REQUEST_SECONDS = 5.0  # a client gets this long to send its request
_WAIT_SERVICE, _WAIT_METHOD = "kqd.v1.KQueueService", "Wait"


def version() -> str:
    """kqd's version, as installed."""
    try:
        return metadata.version("kqd")
    except metadata.PackageNotFoundError:
        return "unknown"


def by_filter(counts: Counter[int]) -> dict[str, int]:
    """*counts* keyed by filter value as ``{label: count}`` for every filter, zeros included."""
    return {label: counts.get(value, 0) for value, label in FILTER_LABELS.items()}


def open_descriptors() -> int:
    """Descriptors this process has open now (as process_open_fds counts them)."""
    return len(os.listdir("/proc/self/fd"))


@dataclass
class DaemonStats:
    """The daemon's numbers at one moment: what the metrics and the admin service show."""

    queues: int = 0
    knotes: dict[str, int] = field(default_factory=dict)
    wait_streams: int = 0
    descriptors_open: int = 0
    descriptors_limit: int = 0
    caller_descriptors: int = 0
    caller_descriptors_limit: int = 0
    resume_log_events: int = 0
    resume_log_bytes: int = 0
    stuck_streams_closed: int = 0
    inotify_overflows: int = 0
    proc_connector_drops: int = 0
    #: True when the per-event counters below are kept (the metrics endpoint is on).
    counting: bool = False
    events_delivered: dict[str, int] = field(default_factory=dict)
    delivery_latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    resumes_refused: int = 0
    #: principal name -> its counters (Usage.snapshot), for those that hold anything.
    principals: dict[str, dict[str, int]] = field(default_factory=dict)


def daemon_stats(service: KQueueService, rpc: RpcMetricsInterceptor | None) -> DaemonStats:
    """Read the daemon's numbers now (on the event loop thread, like every writer of them)."""
    stats = DaemonStats(queues=len(service.queues))
    knotes: Counter[int] = Counter()
    for queue in service.queues.values():
        if not queue.kq.closed:
            knotes.update(queue.kq.count_by_filter())
        events, size = queue.log.kept
        stats.resume_log_events += events
        stats.resume_log_bytes += size
    stats.knotes = by_filter(knotes)
    for usage in service.accounts:
        held = usage.snapshot()
        stats.wait_streams += held["streams"]
        if any(held.values()):
            stats.principals[usage.name] = held
    budget = service.accounts.budget
    stats.caller_descriptors = budget.used
    stats.caller_descriptors_limit = budget.shareable
    stats.descriptors_open = open_descriptors()
    stats.descriptors_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    hub = InotifyHub.existing()
    stats.inotify_overflows = 0 if hub is None else hub.overflows
    connector = ProcConnector.existing()
    stats.proc_connector_drops = 0 if connector is None else connector.drops
    stats.stuck_streams_closed = delivery.stuck_closed
    stats.counting = delivery.enabled and rpc is not None
    if stats.counting and rpc is not None:
        stats.events_delivered = by_filter(delivery.sent_by_filter)
        stats.delivery_latency = delivery.latency
        stats.resumes_refused = rpc.ended(_WAIT_SERVICE, _WAIT_METHOD, "OUT_OF_RANGE")
    return stats


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [(floatToGoString(le), count) for le, count in histogram.cumulative()]


class DaemonCollector(Collector):
    """Every ``kqd_`` series, read from *service* (and the RPC tallies of *rpc*) at scrape."""

    def __init__(self, service: KQueueService, rpc: RpcMetricsInterceptor) -> None:
        self.service = service
        self.rpc = rpc
        self._version = version()

    def collect(self) -> Iterator[Metric]:
        stats = daemon_stats(self.service, self.rpc)
        info = GaugeMetricFamily("kqd_build_info", "kqd's version (always 1).", labels=["version"])
        info.add_metric([self._version], 1)
        yield info
        yield GaugeMetricFamily("kqd_queues", "Queues open.", value=stats.queues)
        knotes = GaugeMetricFamily("kqd_knotes", "Knotes registered, by filter.", labels=["filter"])
        for name, count in stats.knotes.items():
            knotes.add_metric([name], count)
        yield knotes
        yield GaugeMetricFamily("kqd_wait_streams", "Wait streams open.", value=stats.wait_streams)
        yield GaugeMetricFamily(
            "kqd_caller_descriptors",
            "Descriptors the daemon holds for callers (tables, queues, pidfds, duplicates).",
            value=stats.caller_descriptors,
        )
        yield GaugeMetricFamily(
            "kqd_caller_descriptors_limit",
            "Descriptors the daemon gives callers at most, all together.",
            value=stats.caller_descriptors_limit,
        )
        delivered = CounterMetricFamily(
            "kqd_events_delivered", "Events sent by Wait streams, by filter.", labels=["filter"]
        )
        for name, count in stats.events_delivered.items():
            delivered.add_metric([name], count)
        yield delivered
        latency = HistogramMetricFamily(
            "kqd_delivery_latency_seconds",
            "From the core reporting an event to its Wait stream sending it, per event.",
        )
        latency.add_metric([], _buckets(stats.delivery_latency), stats.delivery_latency.sum)
        yield latency
        yield CounterMetricFamily(
            "kqd_stuck_streams_closed",
            "Wait streams closed because their reader read nothing for 60 s.",
            value=stats.stuck_streams_closed,
        )
        yield GaugeMetricFamily(
            "kqd_resume_log_events",
            "Delivered events kept for resuming streams, all queues.",
            value=stats.resume_log_events,
        )
        yield GaugeMetricFamily(
            "kqd_resume_log_bytes",
            "Approximate size of the delivered events kept, all queues.",
            value=stats.resume_log_bytes,
        )
        yield CounterMetricFamily(
            "kqd_resume_refused",
            "Wait calls refused with OUT_OF_RANGE: resume points older than the events kept.",
            value=stats.resumes_refused,
        )
        yield CounterMetricFamily(
            "kqd_inotify_overflows",
            "Times the kernel's inotify queue overflowed.",
            value=stats.inotify_overflows,
        )
        yield CounterMetricFamily(
            "kqd_proc_connector_drops",
            "Times the proc connector's socket overflowed (fork/exec messages dropped).",
            value=stats.proc_connector_drops,
        )
        yield from self._rpc_families()

    def _rpc_families(self) -> Iterator[Metric]:
        handled = CounterMetricFamily(
            "kqd_rpcs",
            "RPCs handled, by method and status code.",
            labels=["service", "method", "code"],
        )
        for labels, count in sorted(self.rpc.handled.items()):
            handled.add_metric(list(labels), count)
        yield handled
        duration = HistogramMetricFamily(
            "kqd_rpc_duration_seconds",
            "Handling time of unary RPCs, waits included.",
            labels=["service", "method"],
        )
        for method, histogram in sorted(self.rpc.latency.items()):
            duration.add_metric(list(method), _buckets(histogram), histogram.sum)
        yield duration


def registry_for(service: KQueueService, rpc: RpcMetricsInterceptor) -> CollectorRegistry:
    """A registry with the daemon's series and the standard process_* ones."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    registry.register(DaemonCollector(service, rpc))
    return registry


def parse_address(text: str) -> tuple[str, int]:
    """``--metrics-listen``: ``host:port``, ``[v6]:port``, or ``PORT``/``:PORT`` for loopback
    (127.0.0.1). ValueError, saying what is wrong, for anything else."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"{text!r} is not host:port or a port (0..65535)")
    return host, int(port)


def _http_host(host: str) -> str:
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    return host


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error"}  # fmt: skip


class MetricsEndpoint:
    """``GET /metrics`` over HTTP/1.1, answered on the event loop (see the module docstring).

    One request per connection (the answer closes it); the text format or OpenMetrics, as the
    scraper's Accept header asks. A client that sends no complete request within 5 s is cut off.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> str:
        """Listen on *host*:*port*; the address bound (``host:port``, the real port for 0).
        OSError when it cannot."""
        self._server = await asyncio.start_server(self._answer, host, port, reuse_address=True)
        bound = self._server.sockets[0].getsockname()[1]
        return f"{_http_host(host)}:{bound}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_SECONDS)
            writer.write(self._response(head))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # no complete request: nothing to answer
        except ConnectionError:
            pass  # the scraper went away
        finally:
            writer.close()

    def _response(self, head: bytes) -> bytes:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _plain(400, "not an HTTP request\n")
        method, target = parts[0], parts[1]
        if target.partition("?")[0] != METRICS_PATH:
            return _plain(404, f"kqd serves its metrics at {METRICS_PATH}\n")
        if method not in ("GET", "HEAD"):
            return _plain(405, "GET or HEAD only\n", extra="Allow: GET, HEAD\r\n")
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        encoder, content_type = choose_encoder(accept)
        try:
            body = encoder(self.registry)
        except Exception as exc:  # a daemon bug: say so, keep serving
            log.error("metrics scrape failed: %s: %s", type(exc).__name__, exc)
            return _plain(500, "kqd could not collect its metrics; see its log\n")
        return _head(200, content_type, len(body)) + (b"" if method == "HEAD" else body)


def _head(status: int, content_type: str, length: int, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n{extra}Connection: close\r\n\r\n"
    ).encode("latin-1")


def _plain(status: int, text: str, extra: str = "") -> bytes:
    body = text.encode()
    return _head(status, "text/plain; charset=utf-8", len(body), extra) + body
