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

from kqd.daemon.reflection import enable_reflection
from kqd.daemon.service import KQueueService
from kqd.default_socket import default_socket
from kqd.v1 import kqd_pb2, kqd_pb2_grpc

log = logging.getLogger("kqd.daemon")

SERVICE_NAME = kqd_pb2.DESCRIPTOR.services_by_name["KQueueService"].full_name
_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # One daemon per address: a second one must fail to bind, not share the port silently.
    ("grpc.so_reuseport", 0),
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


class ListenError(Exception):
    """An address kqd cannot listen on; the message says why and what to do, ``status`` is
    kqd serve's exit status (1: the address is taken, 2: it is unusable)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def _prepare_unix(address: str, path: Path) -> None:
    """Make *path* ready to bind: refuse a live socket, remove a dead one. Only the default
    socket's directory is created; any other must exist (a typo must not grow a tree)."""
    if _answers(path):
        raise ListenError(
            f"{address} is in use: a kqd (or another program) already listens there; stop it "
            "or choose another --listen",
            status=1,
        )
    try:
        if address == default_socket():
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.parent.is_dir():
            raise ListenError(
                f"cannot listen on {address}: directory {path.parent} does not exist; create "
                "it or choose another --listen"
            )
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left behind by a daemon that died: nobody answers on it
    except OSError as exc:
        raise ListenError(
            f"cannot prepare {path}: {exc.strerror}; run as a user who may write there, or "
            "choose another --listen"
        ) from None


def _check_tcp(address: str) -> None:
    """Refuse a host:port kqd could not bind, before gRPC tries (and logs its own error)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ListenError(
            f"cannot listen on {address}: give unix:///path, or host:port with a port in 0..65535"
        )
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, sockaddr in infos:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(sockaddr)
    except OSError as exc:
        raise ListenError(
            f"cannot listen on {address}: {exc.strerror}; choose a local address and a free port"
        ) from None


def _listen(server: grpc.aio.Server, address: str) -> tuple[str, Path | None]:
    """Add *address* to *server*; what to log for it (with the port actually bound) and the
    socket file to clean up, if any."""
    path = _socket_path(address)
    if path is None:
        _check_tcp(address)
    else:
        _prepare_unix(address, path)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        raise ListenError(f"cannot listen on {address}") from None
    if path is None:
        return f"{address.rpartition(':')[0]}:{port}", None
    return address, path


async def serve(listen: list[str], lease: float, grace: float) -> int:
    server = grpc.aio.server(options=_OPTIONS)
    service = KQueueService(lease)
    kqd_pb2_grpc.add_KQueueServiceServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection([SERVICE_NAME, health.SERVICE_NAME], server)
    bound, sockets = [], []
    for address in listen:
        try:
            where, path = _listen(server, address)
        except ListenError as exc:
            log.error("%s", exc)
            return exc.status
        bound.append(where)
        if path is not None:
            sockets.append(path)
    await server.start()
    for path in sockets:
        os.chmod(path, 0o660)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("kqd serving on %s (lease %ss)", ", ".join(bound), lease)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    housekeeping = asyncio.create_task(service.housekeeping())
    await stop.wait()
    log.info("shutting down: NOT_SERVING, then a %ss grace period for streams", grace)
    await health_servicer.enter_graceful_shutdown()
    service.shut_down()
    housekeeping.cancel()
    await server.stop(grace)
    for path in sockets:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    log.info("kqd stopped")
    return 0
