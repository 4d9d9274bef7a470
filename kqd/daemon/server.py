"""``kqd serve``: one grpc.aio server, health and reflection, clean shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kqd.daemon import admin
from kqd.daemon.authorizer import Authorizer
from kqd.daemon.caller_access import CallerAccess
from kqd.daemon.identity import IdentityInterceptor
from kqd.daemon.listeners import ListenError, Listeners, TlsFiles
from kqd.daemon.metrics import MetricsEndpoint, registry_for
from kqd.daemon.metrics_delivery import delivery
from kqd.daemon.metrics_rpc import RpcMetricsInterceptor
from kqd.daemon.policy import Policy, PolicyError
from kqd.daemon.quotas import Accounts, raise_nofile_limit
from kqd.daemon.reflection import enable_reflection
from kqd.daemon.restore import restore_all
from kqd.daemon.service import KQueueService
from kqd.daemon.store import StateError, StateStore
from kqd.v1 import admin_pb2_grpc, kqd_pb2, kqd_pb2_grpc

log = logging.getLogger("kqd.daemon")

SWITCH_INTERVAL = 0.0005
COLLECTOR_SECONDS = 1.0
SERVICE_NAME = kqd_pb2.DESCRIPTOR.services_by_name["KQueueService"].full_name
_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # One daemon per address: a second one must fail to bind, not share the port silently.
    ("grpc.so_reuseport", 0),
]


class Collector:
    """The garbage collector's policy in the daemon: pauses bounded by what is new, not by
    everything the daemon holds.

    CPython's full collection walks every tracked object, and a daemon holding 300,000 knotes
    (one tracked object each) pauses ~60 ms for it, every client's calls with it, whenever a
    quarter of that population has been allocated anew. So whatever survives a full collection
    is frozen (``gc.freeze``): the next one walks only what appeared since, and collections
    of the older generations come more often than CPython's (MIDDLE_EVERY, OLD_EVERY: 5 and 1,
    not 10 and 10), so each walks a few thousand objects (~1 ms) even while knotes are created
    by the hundred thousand, every one of them a survivor. Young cycles (an exception and its
    frames, a cancelled call's futures) are collected as before, and garbage without cycles,
    frozen or not, is freed by its reference count as always.

    What this gives up: a cycle among objects already frozen is not reclaimed at once. The
    daemon's own long-lived structures break their cycles when they end (a closed kqueue lets
    go of its filters and its host), so that is rare; and when the daemon's resident memory
    has doubled since the last complete collection (and is over VALVE_FLOOR_BYTES),
    ``maintain()`` runs one: memory stays bounded, at one long pause per doubling (CPython's
    own policy pauses for the whole heap once a quarter of it is new).
    """

    MIDDLE_EVERY = 5  # young collections per middle one (CPython's default: 10)
    OLD_EVERY = 1  # middle collections per full one (CPython's default: 10)
    VALVE_RATIO = 2.0
    VALVE_FLOOR_BYTES = 256 * 1024 * 1024

    def __init__(self) -> None:
        self.baseline = 0  # resident bytes after the last complete collection
        self.complete_collections = 0
        self._thresholds = gc.get_threshold()

    def install(self) -> None:
        """Freeze what exists now (the daemon's code and its start-up state) and take over
        from here; ``uninstall()`` gives the collector its usual behaviour back."""
        gc.collect()
        gc.freeze()
        self.baseline = resident_bytes()
        gc.set_threshold(self._thresholds[0], self.MIDDLE_EVERY, self.OLD_EVERY)
        gc.callbacks.append(self._after_collection)

    def uninstall(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._after_collection)
        gc.set_threshold(*self._thresholds)
        gc.unfreeze()

    @staticmethod
    def _after_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            gc.freeze()  # the survivors: what the oldest generation holds now

    def maintain(self) -> bool:
        """The safety valve (see the class docstring): one complete collection when due;
        whether it ran."""
        if resident_bytes() < max(self.baseline * self.VALVE_RATIO, self.VALVE_FLOOR_BYTES):
            return False
        started = time.monotonic()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.baseline = resident_bytes()
        self.complete_collections += 1
        log.info(
            "complete garbage collection: %d objects freed in %.3fs, %d MiB resident",
            found,
            time.monotonic() - started,
            self.baseline >> 20,
        )
        return True


def resident_bytes() -> int:
    """This process's resident memory (the kernel's count, a read of /proc)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE_SIZE


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def serve_command(
    target: str, *extra: str, log_level: str = "warning", state: Path | None = None
) -> list[str]:
    """The command line that runs ``kqd serve`` on *target* with this interpreter, keeping its
    state in *state* (None: no state directory, nothing survives it)."""
    return [
        sys.executable,
        "-m",
        "kqd",
        "serve",
        "--listen",
        target,
        "--log-level",
        log_level,
        *(["--no-state"] if state is None else ["--state-dir", str(state)]),
        *extra,
    ]


def reload_policy(authorizer: Authorizer) -> None:
    """SIGHUP: read the policy file again; one that does not load leaves the old one in force."""
    source = authorizer.policy.source
    if source is None:
        return  # the built-in defaults: nothing to read again
    try:
        authorizer.policy = Policy.load(source)
    except PolicyError as exc:
        log.error("policy not reloaded, the previous one stays in force: %s", exc)
        return
    log.info("policy reloaded: %s", authorizer.policy.describe())


@dataclass(frozen=True)
class ServeOptions:
    listen: list[str]
    lease: float = 60.0
    grace: float = 5.0
    tls: TlsFiles | None = None
    insecure_tcp: bool = False
    socket_group: int | None = None
    state_dir: Path | None = None  # None: nothing survives the daemon
    sync: str = "normal"
    reset_state: bool = False
    policy: Policy | None = None
    # (host, port) for the Prometheus endpoint (kqd.daemon.metrics), None: no metrics.
    metrics_listen: tuple[str, int] | None = None


async def _start_metrics(
    options: ServeOptions, service: KQueueService, rpc: RpcMetricsInterceptor | None
) -> MetricsEndpoint | None:
    """The metrics endpoint, listening, when asked for; ListenError when it cannot listen."""
    if options.metrics_listen is None or rpc is None:
        return None
    delivery.enabled = True
    endpoint = MetricsEndpoint(registry_for(service, rpc))
    host, port = options.metrics_listen
    try:
        bound = await endpoint.start(host, port)
    except OSError as exc:
        raise ListenError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror}; choose another "
            "--metrics-listen",
            status=1 if exc.errno == errno.EADDRINUSE else 2,
        ) from None
    log.info("metrics on http://%s/metrics", bound, extra={"metrics": bound})
    return endpoint


async def serve(options: ServeOptions) -> int:
    # The event loop and gRPC's own threads take turns on the GIL.
    # Under a busy loop, each handoff waits out the switch interval (5 ms by default), and a
    # call crosses several: a shorter interval keeps other clients' calls quick.
    sys.setswitchinterval(SWITCH_INTERVAL)
    listeners = Listeners(options.tls, options.insecure_tcp, options.socket_group)
    identity = IdentityInterceptor((SERVICE_NAME, admin.SERVICE_NAME), listeners.relays)
    # The RPC metrics come first: they see what the identity interceptor refuses too.
    rpc = RpcMetricsInterceptor() if options.metrics_listen is not None else None
    interceptors = [identity] if rpc is None else [rpc, identity]
    server = grpc.aio.server(options=_OPTIONS, interceptors=interceptors)
    raise_nofile_limit()
    access = CallerAccess()
    authorizer = Authorizer(options.policy or Policy.default(), access)
    service = KQueueService(options.lease, authorizer, Accounts())
    kqd_pb2_grpc.add_KQueueServiceServicer_to_server(service, server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(admin.AdminService(service, rpc), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection([SERVICE_NAME, admin.SERVICE_NAME, health.SERVICE_NAME], server)
    try:
        for address in options.listen:
            listeners.add(server, address)
        metrics = await _start_metrics(options, service, rpc)
    except ListenError as exc:
        log.error("%s", exc)
        listeners.close()
        return exc.status
    try:
        store = None
        if options.state_dir is not None:
            store = StateStore(options.state_dir, sync=options.sync, reset=options.reset_state)
    except (StateError, OSError) as exc:
        log.error("%s", exc)
        listeners.close()
        return 2
    service.store = store
    if store is not None:
        started = time.monotonic()
        try:
            count = await restore_all(service, store)
        except sqlite3.DatabaseError as exc:
            log.error(
                "the state in %s cannot be read back (%s); move it away to keep it, or start "
                "with --reset-state to begin empty",
                options.state_dir,
                exc,
            )
            listeners.close()
            return 2
        took = time.monotonic() - started
        log.info("state in %s: %d queue(s) restored in %.3fs", options.state_dir, count, took)
    await server.start()
    listeners.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "kqd serving on %s (lease %ss)",
        ", ".join(listeners.bound),
        options.lease,
        extra={"listen": listeners.bound, "lease": options.lease},
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_policy, authorizer)
    housekeeping = asyncio.create_task(service.housekeeping())
    collector = Collector()
    collector.install()
    collecting = asyncio.create_task(_collect_now_and_then(collector))
    await stop.wait()
    collecting.cancel()
    log.info("shutting down: NOT_SERVING, then a %ss grace period for streams", options.grace)
    await health_servicer.enter_graceful_shutdown()
    listeners.stop_accepting()
    service.shut_down()
    housekeeping.cancel()
    await server.stop(options.grace)
    if metrics is not None:
        await metrics.close()
    listeners.close()
    access.close()
    if store is not None:
        store.close()
    collector.uninstall()
    log.info("kqd stopped")
    return 0


async def _collect_now_and_then(collector: Collector) -> None:
    """The collector's safety valve, looked at once a second (a comparison when not due)."""
    while True:
        await asyncio.sleep(COLLECTOR_SECONDS)
        collector.maintain()
