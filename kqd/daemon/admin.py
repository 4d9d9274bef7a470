"""kqd.v1.AdminService: what the daemon holds, for privileged principals (``kqctl stats``,
``kqctl queues``).

Who is privileged (anyone else gets PERMISSION_DENIED, and a line in the ``kqd.audit`` log):

- on the Unix socket, uid 0 and the daemon's own uid. Both could read the daemon's memory
  anyway (root with its capabilities, the daemon's user with ptrace), so the admin service shows
  them nothing they could not see; this is what lets ``kqctl stats`` work as root on a host and
  as the daemon's user inside its container, with no policy at all;
- any principal whose policy resolves to ``privileged = true`` (a "uid:N" or "gid:N" table, a
  TLS certificate's name). Plain TCP's "tcp:anonymous" can never be privileged.

Answers come from the same reading of the daemon's state as the metrics (``metrics.daemon_stats``)
and never carry a queue id: a queue is shown as :func:`queue_hash`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import TYPE_CHECKING

import grpc

from kqd.daemon.identity import Principal, current_principal
from kqd.daemon.metrics import by_filter, daemon_stats, version
from kqd.daemon.metrics_delivery import delivery
from kqd.daemon.metrics_rpc import RpcMetricsInterceptor
from kqd.v1 import admin_pb2, admin_pb2_grpc
from kqd.wire import duration

if TYPE_CHECKING:
    from kqd.daemon.remote_queue import RemoteQueue
    from kqd.daemon.service import KQueueService

audit = logging.getLogger("kqd.audit")

SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
DENIED = (
    "the admin service is for privileged callers only: root or the daemon's own user on its "
    "Unix socket, or a principal with privileged = true in kqd's policy"
)


def queue_hash(queue: RemoteQueue) -> str:
    """How the admin service names a queue: the first 8 hex digits of the SHA-256 of its id
    (its ``key`` where the queue keeps one: a queue restored from a state store knows only
    that)."""
    key = getattr(queue, "key", None) or hashlib.sha256(queue.queue_id.encode()).hexdigest()
    return str(key)[:8]


def _counts(counts: dict[str, int]) -> list[admin_pb2.FilterCount]:
    return [admin_pb2.FilterCount(filter=name, count=n) for name, n in counts.items()]


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    """Reads *service*'s state (and *rpc*'s tallies, when the metrics endpoint is on)."""

    def __init__(self, service: KQueueService, rpc: RpcMetricsInterceptor | None) -> None:
        self.service = service
        self.rpc = rpc
        self.started = time.monotonic()
        self._version = version()

    def privileged(self, principal: Principal) -> bool:
        """May *principal* use the admin service? (See the module docstring.)"""
        if principal.peer is not None and principal.peer.uid in (0, os.geteuid()):
            return True
        return self.service.authorizer.rules(principal).privileged

    async def _check(self, context: grpc.aio.ServicerContext, method: str) -> None:
        principal = current_principal.get()
        if self.service.stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "kqd is shutting down")
        if not self.privileged(principal):
            audit.info("%s AdminService/%s: denied (not privileged)", principal.name, method)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, DENIED)

    async def GetStats(self, request, context):  # noqa: N802 - gRPC method names
        await self._check(context, "GetStats")
        stats = daemon_stats(self.service, self.rpc)
        response = admin_pb2.GetStatsResponse(
            version=self._version,
            uptime=duration(time.monotonic() - self.started),
            queues=stats.queues,
            knotes=_counts(stats.knotes),
            wait_streams=stats.wait_streams,
            descriptors=admin_pb2.DescriptorStats(
                open=stats.descriptors_open,
                limit=stats.descriptors_limit,
                for_callers=stats.caller_descriptors,
                for_callers_limit=stats.caller_descriptors_limit,
            ),
            resume_log=admin_pb2.ResumeLogStats(
                events=stats.resume_log_events, bytes=stats.resume_log_bytes
            ),
            stuck_streams_closed=stats.stuck_streams_closed,
            inotify_overflows=stats.inotify_overflows,
            proc_connector_drops=stats.proc_connector_drops,
        )
        if stats.counting:
            response.delivery.CopyFrom(
                admin_pb2.DeliveryCounters(
                    events_delivered=_counts(stats.events_delivered),
                    latency_count=stats.delivery_latency.count,
                    latency_sum_seconds=stats.delivery_latency.sum,
                    resumes_refused=stats.resumes_refused,
                )
            )
        for name, held in sorted(stats.principals.items()):
            response.principals.add(
                principal=name,
                queues=held["queues"],
                knotes=held["knotes"],
                descriptors=held["descriptors"],
                wait_streams=held["streams"],
                udata_bytes=held["udata_bytes"],
                timers=held["timers"],
                daemon_descriptors=held["daemon_fds"],
            )
        return response

    async def ListQueues(self, request, context):  # noqa: N802
        await self._check(context, "ListQueues")
        now = time.monotonic()
        summaries = []
        for queue in list(self.service.queues.values()):
            if request.owner and queue.owner != request.owner:
                continue
            knotes = {} if queue.kq.closed else by_filter(queue.kq.count_by_filter())
            summary = admin_pb2.QueueSummary(
                queue_hash=queue_hash(queue),
                owner=queue.owner,
                knotes=_counts({k: n for k, n in knotes.items() if n}),
                wait_streams=delivery.streams_of(queue),
                calls=queue.users,
                last_sequence=queue.log.last_sequence,
                descriptors=len(queue.descriptors),
                lease=duration(queue.lease),
            )
            if queue.users == 0:
                left = max(0.0, queue.lease - (now - queue.last_seen))
                summary.lease_left.CopyFrom(duration(left))
            summaries.append(summary)
        summaries.sort(key=lambda s: (s.owner, s.queue_hash))
        return admin_pb2.ListQueuesResponse(queues=summaries)
