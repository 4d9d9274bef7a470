"""``kqd serve``: one grpc.aio server, health and reflection, clean shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kqd.daemon.service import KQueueService
from kqd.v1 import kqd_pb2, kqd_pb2_grpc

log = logging.getLogger("kqd.daemon")

SERVICE_NAME = kqd_pb2.DESCRIPTOR.services_by_name["KQueueService"].full_name
_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def serve_command(target: str, *extra: str, log_level: str = "warning") -> list[str]:
    """The command line that runs ``kqd serve`` on *target* with this interpreter."""
    return [
        sys.executable,
        "-m",
        "kqd",
        "serve",
        "--listen",
        target,
        "--log-level",
        log_level,
        *extra,
    ]


def _answers(path: Path) -> bool:
    """Does something accept connections on the Unix socket *path*?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _socket_path(address: str) -> Path | None:
    if address.startswith("unix://"):
        return Path(address.removeprefix("unix://"))
    if address.startswith("unix:"):
        return Path(address.removeprefix("unix:"))
    return None


async def serve(listen: list[str], lease: float, grace: float) -> int:
    server = grpc.aio.server(options=_OPTIONS)
    service = KQueueService(lease)
    kqd_pb2_grpc.add_KQueueServiceServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    sockets = []
    for address in listen:
        path = _socket_path(address)
        if path is not None:
            if _answers(path):
                log.error(
                    "%s is in use: a kqd (or another program) already listens there; stop it "
                    "or choose another --listen",
                    address,
                )
                return 1
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # left behind by a daemon that died: nobody answers on it
            except OSError as exc:
                log.error(
                    "cannot prepare %s: %s; run as a user who may write there, or choose "
                    "another --listen",
                    path,
                    exc.strerror,
                )
                return 2
            sockets.append(path)
        try:
            server.add_insecure_port(address)
        except RuntimeError:
            log.error(
                "cannot listen on %s: give unix:///path, or host:port with a local address "
                "and a free port",
                address,
            )
            return 2
    await server.start()
    for path in sockets:
        os.chmod(path, 0o660)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("kqd serving on %s (lease %ss)", ", ".join(listen), lease)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    housekeeping = asyncio.create_task(service.housekeeping())
    await stop.wait()
    log.info("shutting down: NOT_SERVING, then a %ss grace period for streams", grace)
    await health_servicer.enter_graceful_shutdown()
    service.stop_streams()
    housekeeping.cancel()
    await server.stop(grace)
    service.close_all()
    for path in sockets:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    log.info("kqd stopped")
    return 0
