"""Who may connect, over which transport: TLS with client certificates, plain TCP only on loopback
and only when asked for, and a principal from the certificate, never from the client's words."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kqclient
import pytest

from kqd.daemon.server import serve_command
from tests.conftest import WAIT_BOUND, Daemon, free_tcp_port, start_daemon


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1, clients signed by the CA and one that is not."""

    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    def client(self, name: str) -> kqclient.TlsClientFiles:
        return kqclient.TlsClientFiles(
            self.path("ca.pem"), self.path(f"{name}.pem"), self.path(f"{name}.key")
        )

    def server_args(self) -> list[str]:
        return [
            "--tls-cert",
            str(self.path("server.pem")),
            "--tls-key",
            str(self.path("server.key")),
            "--tls-client-ca",
            str(self.path("ca.pem")),
        ]


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def issue(cwd: Path, name: str, subject: str, ca: str, extensions: str = "") -> None:
    """A key and a certificate for *subject*, signed by the CA named *ca*."""
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=cwd)  # fmt: skip
    extra = []
    if extensions:
        (cwd / f"{name}.ext").write_text(extensions)
        extra = ["-extfile", f"{name}.ext"]
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", *extra, cwd=cwd)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (Debian's openssl package)")
    cwd = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue-ca"):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                "-subj", f"/CN=kqd test {ca}", cwd=cwd)  # fmt: skip
    issue(cwd, "server", "/CN=localhost", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    issue(cwd, "alice", "/CN=alice", "ca")
    issue(cwd, "bob", "/CN=bob", "ca")
    issue(cwd, "mallory", "/CN=alice", "rogue-ca")  # claims to be alice
    return Pki(cwd)


@pytest.fixture(scope="module")
def tls_daemon(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    target = f"127.0.0.1:{free_tcp_port()}"
    daemon = start_daemon(
        tmp_path_factory.mktemp("tls"), *pki.server_args(), target=target, tls=pki.client("alice")
    )
    yield daemon
    assert daemon.stop() == 0


def test_a_client_certificate_from_the_ca_is_accepted(tls_daemon: Daemon, pki: Pki) -> None:
    with kqclient.connect(tls_daemon.target, tls=pki.client("alice")) as client:
        kq = client.kqueue()
        kq.control([kqclient.kevent(1, kqclient.KQ_FILTER_USER, kqclient.KQ_EV_ADD)], 0)
        assert kq.control(None, 1, 0) == []


def test_no_client_certificate_is_refused(tls_daemon: Daemon, pki: Pki) -> None:
    import grpc

    from kqd.v1 import kqd_pb2, kqd_pb2_grpc

    credentials = grpc.ssl_channel_credentials(root_certificates=pki.path("ca.pem").read_bytes())
    with grpc.secure_channel(tls_daemon.target, credentials) as channel:
        stub = kqd_pb2_grpc.KQueueServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateQueue(kqd_pb2.CreateQueueRequest(), timeout=WAIT_BOUND)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake itself fails


def test_a_certificate_from_another_ca_is_refused(tls_daemon: Daemon, pki: Pki) -> None:
    forged = kqclient.TlsClientFiles(
        pki.path("ca.pem"), pki.path("mallory.pem"), pki.path("mallory.key")
    )
    with (
        kqclient.connect(tls_daemon.target, tls=forged) as client,
        pytest.raises(kqclient.DaemonUnavailable),
    ):
        client.kqueue()


def test_plain_tcp_is_refused_without_the_flag() -> None:
    result = subprocess.run(
        serve_command(f"127.0.0.1:{free_tcp_port()}"),
        capture_output=True,
        text=True,
        timeout=WAIT_BOUND,
    )
    assert result.returncode == 2
    assert "refusing plain TCP" in result.stderr and "--insecure-tcp" in result.stderr


def test_insecure_tcp_is_refused_off_loopback() -> None:
    result = subprocess.run(
        serve_command("0.0.0.0:0", "--insecure-tcp"),
        capture_output=True,
        text=True,
        timeout=WAIT_BOUND,
    )
    assert result.returncode == 2
    assert "only on loopback" in result.stderr


def test_tls_needs_all_three_files(pki: Pki) -> None:
    result = subprocess.run(
        [*serve_command(f"127.0.0.1:{free_tcp_port()}"), "--tls-cert", str(pki.path("server.pem"))],
        capture_output=True,
        text=True,
        timeout=WAIT_BOUND,
    )
    assert result.returncode == 2
    assert "--tls-client-ca" in result.stderr


@pytest.fixture(scope="module")
def mapped_daemon(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Daemon, Path]]:
    """A TLS daemon whose policy grants alice one directory (opened with the daemon's rights)
    and nothing else; bob gets the defaults: no local identity at all."""
    directory = tmp_path_factory.mktemp("mapped")
    granted = (directory / "granted").resolve()
    granted.mkdir()
    (granted / "log").write_text("hello")
    policy = directory / "policy.toml"
    policy.write_text(f'[principal."tls:alice"]\npaths_granted = ["{granted}"]\n')
    target = f"127.0.0.1:{free_tcp_port()}"
    daemon = start_daemon(
        directory, *pki.server_args(), "--policy", str(policy), target=target,
        tls=pki.client("alice"),
    )  # fmt: skip
    yield daemon, granted
    assert daemon.stop() == 0


def test_a_tls_principal_gets_what_the_policy_grants(
    mapped_daemon: tuple[Daemon, Path], pki: Pki
) -> None:
    daemon, granted = mapped_daemon
    with kqclient.connect(daemon.target, tls=pki.client("alice")) as alice:
        kq = alice.kqueue()
        assert kq.open(str(granted / "log")) >= 0
        with pytest.raises(PermissionError):
            kq.open("/etc/hostname")  # readable by anyone on the host, but alice is nobody here
        with pytest.raises(PermissionError):
            kq.open_peer_fd(os.getpid(), 0)  # no local identity: no OpenPeerFd
    with kqclient.connect(daemon.target, tls=pki.client("bob")) as bob:
        with pytest.raises(PermissionError):
            bob.kqueue().open(str(granted / "log"))
        with pytest.raises(kqclient.QueueNotFound):  # alice's queue is not bob's
            bob.kqueue(kq.queue_id).control(None, 1, 0)
