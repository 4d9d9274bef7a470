"""Fixtures for the operations tests: a daemon with its metrics endpoint, scraping, kqctl."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import WAIT_BOUND, Daemon, free_tcp_port, start_daemon

# The real unprivileged users of tests/security, for the admin service's refusals.
from tests.security.conftest import test_users, user_a  # noqa: F401 - fixtures

KQCTL = [sys.executable, "-m", "kqclient.kqctl"]
# Quotas out of the way of the loads here (tests/security tests quotas).
POLICY = "[defaults.quotas]\nqueues = 100000\nknotes = 1000000\nchanges_per_second = 100000000\n"


@dataclass
class Samples:
    """One scrape: every sample by (name, labels)."""

    values: dict[tuple[str, frozenset[tuple[str, str]]], float]
    text: str

    def get(self, name: str, **labels: str) -> float:
        """The sample *name* with exactly *labels*; KeyError naming what is there if absent."""
        key = (name, frozenset(labels.items()))
        if key not in self.values:
            names = sorted({n for n, _ in self.values if n.startswith(name)})
            raise KeyError(f"no sample {name}{labels}; samples named like it: {names}")
        return self.values[key]

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """Every sample *name* by the value of its *label*."""
        return {
            dict(labels)[label]: value for (n, labels), value in self.values.items() if n == name
        }


def fetch(port: int) -> str:
    """GET /metrics on 127.0.0.1:*port*: the exposition text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT_BOUND) as answer:
        return str(answer.read().decode())


def scrape(port: int) -> Samples:
    text = fetch(port)
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Samples(values, text)


@dataclass
class OpsDaemon:
    """A ``kqd serve`` with ``--metrics-listen`` on a loopback port."""

    daemon: Daemon
    port: int

    @property
    def target(self) -> str:
        return self.daemon.target

    def scrape(self) -> Samples:
        return scrape(self.port)

    def scrape_when(self, ready: Callable[[Samples], bool]) -> Samples:
        """A scrape once *ready* holds for it (bounded by WAIT_BOUND; then the last one): the
        daemon counts a call or a sent event when gRPC tells it the call ended or the write
        completed, which can be just after the client has seen it."""
        deadline = time.monotonic() + WAIT_BOUND
        while not ready(got := self.scrape()) and time.monotonic() < deadline:
            time.sleep(0.01)
        return got


def start_ops_daemon(directory: Path, *extra: str, log_level: str | None = None) -> OpsDaemon:
    policy = directory / "policy.toml"
    policy.write_text(POLICY)
    port = free_tcp_port()
    daemon = start_daemon(
        directory,
        "--policy",
        str(policy),
        "--metrics-listen",
        f"127.0.0.1:{port}",
        *extra,
        log_level=log_level,
    )
    return OpsDaemon(daemon, port)


@pytest.fixture
def ops_daemon(tmp_path: Path) -> Iterator[OpsDaemon]:
    """A fresh daemon per test: its counters start at zero."""
    ops = start_ops_daemon(tmp_path)
    yield ops
    assert ops.daemon.stop() == 0


def kqctl(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KQCTL, "--target", target, *args],
        capture_output=True,
        text=True,
        timeout=WAIT_BOUND * 2,
    )


def kqctl_json(target: str, *args: str) -> list[dict[str, Any]]:
    """kqctl -w json ARGS: its records (it must succeed)."""
    done = kqctl(target, "-w", "json", *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]
