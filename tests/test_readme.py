"""Every user-facing example of README.md, run as written against a live ``kqd serve``.

The examples are read from README.md itself (its fenced code blocks), never copied here, so a
README edit is tested as soon as it is made. Shell examples run with ``bash`` from the
repository root with ``KQD_TARGET`` naming a daemon this module starts; Python snippets run as
scripts with the same environment. Where an example cannot run as written on a test machine
(a system file, a fixed port, an arbitrary pid), the test changes it with one visible
``substitute()`` call that says what it changed and why; nothing else is changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from tests.conftest import WAIT_BOUND, Daemon, start_daemon

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

# Anchors: the prose right before each example this module runs.
KQCTL_EXAMPLES_ANCHOR = "With the daemon running, from another terminal"
KQCLIENT_SNIPPET_ANCHOR = "and from Python:"
CORE_SNIPPET_ANCHOR = "## The core: `kqd.core`"

# Blocks not run here, by their first line, and why.
NOT_RUN = {
    "make run": "runs the daemon and this very test suite (make test)",
    ".venv/bin/python -m bench setup": "minutes long; tests/test_bench_smoke.py runs them",
    "export CONTAINERS_CONF=": "needs rootful podman; tests/deploy/test_sidecar.py runs it",
}

# The pwait example against a lease shorter than the wait: the queue must outlive its lease
# while a call is waiting on it.
SHORT_LEASE = 2
SHORT_SLEEP = 4  # seconds: longer than SHORT_LEASE, shorter than the README's 30


@dataclass(frozen=True)
class Block:
    """One fenced code block of README.md."""

    lang: str
    code: str
    offset: int  # where its opening fence starts in README.md
    line: int  # the opening fence's line number (1-based)


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def readme_blocks() -> list[Block]:
    """Every fenced code block of README.md, in order."""
    text = readme_text()
    return [
        Block(m["lang"], m["code"], m.start(), text.count("\n", 0, m.start()) + 1)
        for m in re.finditer(r"^```(?P<lang>\w*)\n(?P<code>.*?)^```$", text, re.M | re.S)
    ]


def block_after(anchor: str, lang: str) -> Block:
    """The first *lang* block after the text *anchor*; fails if the README lost either."""
    offset = readme_text().find(anchor)
    if offset < 0:
        pytest.fail(f"README.md no longer has {anchor!r}: update tests/test_readme.py")
    for block in readme_blocks():
        if block.offset > offset and block.lang == lang:
            return block
    pytest.fail(f"README.md has no {lang} block after {anchor!r}")


def kqctl_example(marker: str) -> str:
    """The one line of the kqctl examples block that contains *marker*."""
    block = block_after(KQCTL_EXAMPLES_ANCHOR, "sh")
    lines = [line for line in block.code.splitlines() if marker in line]
    assert len(lines) == 1, f"want one README kqctl example with {marker!r}, got {lines}"
    return lines[0]


def documented_output(example: str) -> str:
    """The output an example's comment quotes (its first "..." after the #)."""
    comment = example.split("#", 1)[1] if "#" in example else ""
    quoted = re.search(r'"([^"]*)"', comment)
    assert quoted, f"the README example {example!r} no longer quotes its output"
    return quoted[1]


def substitute(example: str, old: str, new: str, why: str) -> str:
    """*example* with *old* replaced by *new*: the only way this module changes an example.
    *why* says why it cannot run as written; fails if the example no longer has *old*."""
    assert old in example, f"README example {example!r} has no {old!r} (substituted: {why})"
    return example.replace(old, new)


def with_this_interpreter(example: str) -> str:
    """The example with ``.venv/bin/`` pointing at the virtualenv that runs these tests,
    where that is not the repository's ``.venv``."""
    here = os.path.abspath(os.path.dirname(sys.executable))
    if here == os.path.abspath(REPO / ".venv" / "bin") or ".venv/bin/" not in example:
        return example
    return substitute(example, ".venv/bin/", f"{here}/", "the tests run from another virtualenv")


class Run:
    """An example running in its own session (so every process it starts can be ended), its
    output collected line by line as it comes."""

    def __init__(self, argv: list[str], target: str, what: str) -> None:
        self.what = what
        self.process = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, "KQD_TARGET": target},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._stderr_lines: queue.Queue[str] = queue.Queue()
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout.append)),
            threading.Thread(target=self._read, args=(self.process.stderr, self._stderr_lines.put)),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str], sink: Callable[[str], None]) -> None:
        with stream:
            for line in stream:
                sink(line)

    def wait_for_stderr(self, text: str, bound: float = WAIT_BOUND) -> None:
        """Return once a stderr line contains *text*; fail after *bound* seconds."""
        deadline = time.monotonic() + bound
        while not any(text in line for line in self.stderr):
            try:
                self.stderr.append(self._stderr_lines.get(timeout=deadline - time.monotonic()))
            except (queue.Empty, ValueError):  # ValueError: the deadline passed (negative)
                self.kill()
                pytest.fail(f"{self.what}: no {text!r} on stderr within {bound}s ({self.output})")

    def finish(self, bound: float) -> subprocess.CompletedProcess[str]:
        """The finished run; fails (ending every process of the example) after *bound* s."""
        try:
            self.process.wait(bound)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.what}: did not finish within {bound}s ({self.output})")
        finally:
            self.kill()  # and whatever the example left in the background, holding its pipes
            for reader in self._readers:
                reader.join(WAIT_BOUND)
        assert not any(reader.is_alive() for reader in self._readers), f"{self.what}: output open"
        return subprocess.CompletedProcess(
            self.process.args, self.process.returncode, "".join(self.stdout), self.stderr_text
        )

    def kill(self) -> None:
        """SIGKILL to the example's whole session."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    @property
    def stderr_text(self) -> str:
        while not self._stderr_lines.empty():
            self.stderr.append(self._stderr_lines.get_nowait())
        return "".join(self.stderr)

    @property
    def output(self) -> str:
        return f"stdout {''.join(self.stdout)!r}, stderr {self.stderr_text!r}"


def run_sh(example: str, target: str, bound: float = WAIT_BOUND) -> subprocess.CompletedProcess:
    """Run a shell example with bash from the repository root, bounded by *bound* seconds."""
    return Run(["bash", "-c", with_this_interpreter(example)], target, example).finish(bound)


def run_python(block: Block, target: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a Python snippet as a script from the repository root, bounded."""
    script = tmp_path / f"readme_line_{block.line}.py"
    script.write_text(block.code)
    what = f"README.md's Python snippet at line {block.line}"
    return Run([sys.executable, str(script)], target, what).finish(WAIT_BOUND)


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}, stdout {result.stdout!r}, stderr {result.stderr!r}"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The daemon the examples talk to (default settings)."""
    running = start_daemon(tmp_path_factory.mktemp("readme"))
    yield running
    assert running.stop() == 0, "kqd serve did not exit cleanly on SIGTERM"


def test_every_readme_block_is_run_or_excused() -> None:
    run = {
        block_after(anchor, lang).offset
        for anchor, lang in [
            (KQCTL_EXAMPLES_ANCHOR, "sh"),
            (KQCLIENT_SNIPPET_ANCHOR, "python"),
            (CORE_SNIPPET_ANCHOR, "python"),
        ]
    }
    for block in readme_blocks():
        if block.offset in run:
            continue
        first = block.code.lstrip().splitlines()[0] if block.code.strip() else ""
        assert any(first.startswith(prefix) for prefix in NOT_RUN), (
            f"README.md line {block.line}: a code block this module neither runs nor excuses "
            f"({first!r}); run it in tests/test_readme.py, or add it to NOT_RUN with the reason"
        )


def test_every_kqctl_example_is_run() -> None:
    block = block_after(KQCTL_EXAMPLES_ANCHOR, "sh")
    markers = ["kqctl pwait -v $!", "kqctl watch", "kqctl wait-port", "-w json pwait", "health"]
    for line in filter(str.strip, block.code.splitlines()):
        covering = [marker for marker in markers if marker in line]
        assert len(covering) == 1, f"README kqctl example {line!r} is not run by exactly one test"


def test_pwait_example_outlives_the_queue_lease(tmp_path: Path) -> None:
    """The first example, against a daemon whose lease is shorter than the wait: the waiting
    call keeps the queue alive, and the exit is reported."""
    example = kqctl_example("kqctl pwait -v $!")
    command = substitute(
        example,
        "sleep 30",
        f"sleep {SHORT_SLEEP}",
        f"a wait longer than the test daemon's {SHORT_LEASE}s lease, but not 30s",
    )
    short_lease = start_daemon(tmp_path, "--lease", str(SHORT_LEASE))
    try:
        started = time.monotonic()
        result = run_sh(command, short_lease.target, bound=SHORT_SLEEP + WAIT_BOUND)
        waited = time.monotonic() - started
    finally:
        assert short_lease.stop() == 0, "kqd serve did not exit cleanly on SIGTERM"
    pattern = r"\d+: exited with status 0"
    assert re.fullmatch(pattern, documented_output(example)), "the README quotes other output"
    assert result.returncode == 0, f"{command!r} with --lease {SHORT_LEASE}: {explain(result)}"
    assert re.fullmatch(pattern + "\n", result.stdout), explain(result)
    assert waited > SHORT_LEASE, f"the wait ({waited:.1f}s) did not outlive the lease"


def test_watch_example(daemon: Daemon, tmp_path: Path) -> None:
    example = kqctl_example("kqctl watch")
    watched = tmp_path / "hosts"
    watched.write_text("127.0.0.1 localhost\n")
    command = substitute(
        example, "/etc/hosts", str(watched), "the test writes to the watched file, not /etc/hosts"
    )
    run = Run(["bash", "-c", with_this_interpreter(command)], daemon.target, command)
    run.wait_for_stderr("watching 1 path")
    with open(watched, "a") as f:
        f.write("127.0.0.1 kqd-readme\n")
    result = run.finish(WAIT_BOUND)
    expected = substitute(
        documented_output(example), "/etc/hosts", str(watched), "the same file as the command"
    )
    assert (result.returncode, result.stdout) == (0, expected + "\n"), explain(result)


def test_wait_port_example(daemon: Daemon) -> None:
    example = kqctl_example("kqctl wait-port")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        command = substitute(
            example,
            "127.0.0.1:5432",
            address,
            "a port this test listens on; 5432 may be free or anything on a test machine",
        )
        result = run_sh(command, daemon.target)
    assert result.returncode == 0, explain(result)
    available, ran = result.stdout.splitlines()
    assert re.fullmatch(re.escape(address) + r" is available after \d+\.\d{3}s", available)
    assert ran == "db is up", explain(result)


def test_json_pwait_example(daemon: Daemon) -> None:
    """``-w json pwait -v PID`` prints one JSON Lines record per exit."""
    example = kqctl_example("-w json pwait")
    exited = subprocess.Popen(["sh", "-c", "exit 3"])
    try:
        pidfd = os.pidfd_open(exited.pid)
        try:  # readable once it exited; not reaped, so the daemon can still see it
            assert select.select([pidfd], [], [], WAIT_BOUND)[0], "sh -c 'exit 3' did not exit"
        finally:
            os.close(pidfd)
        command = substitute(
            example,
            "4242",
            str(exited.pid),
            "4242 stands for any pid: here one whose exit status (3) is known",
        )
        result = run_sh(command, daemon.target)
    finally:
        exited.wait(WAIT_BOUND)
    assert result.returncode == 0, explain(result)
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"pid": exited.pid, "status": 3 << 8, "exit_code": 3}
    ], explain(result)


def test_health_example(daemon: Daemon) -> None:
    result = run_sh(kqctl_example("kqctl health"), daemon.target)
    assert (result.returncode, result.stdout) == (0, "SERVING\n"), explain(result)


def test_kqclient_snippet(daemon: Daemon, tmp_path: Path) -> None:
    """The Python client snippet, as written: it starts the process whose pid it waits for,
    prints one event and closes its queue."""
    result = run_python(block_after(KQCLIENT_SNIPPET_ANCHOR, "python"), daemon.target, tmp_path)
    assert result.returncode == 0, explain(result)
    assert re.fullmatch(r"\d+ -?\d+ b'job-17'\n", result.stdout), explain(result)


def test_core_snippet(daemon: Daemon, tmp_path: Path) -> None:
    """The ``kqd.core`` snippet, as written: it starts the process whose pid it waits for and
    prints its exit within the snippet's 1.5 s wait."""
    result = run_python(block_after(CORE_SNIPPET_ANCHOR, "python"), daemon.target, tmp_path)
    assert result.returncode == 0, explain(result)
    assert re.fullmatch(r"\d+ -?\d+ b'opaque'\n", result.stdout), explain(result)
