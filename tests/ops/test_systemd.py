"""deploy/systemd/kqd.service, validated offline: ``systemd-analyze verify`` (and its security
score) where systemd-analyze is installed, and the invariants the daemon relies on, in Python.

Nothing here starts the unit: these machines run no systemd. ``systemd-analyze --root`` reads
the unit from a scratch root holding the unit, stand-ins for the commands it runs and the host's
targets, so the checks need neither /opt/kqd nor a kqd group.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "kqd.service"
SYSUSERS = REPO / "deploy" / "systemd" / "kqd.sysusers"
HOST_UNITS = Path("/usr/lib/systemd/system")

# The capabilities the unit documents as the least kqd needs (see the unit's comments).
CAPABILITIES = {"CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}
# System calls kqd makes that a filter must allow (its core, the caller helpers, gRPC).
SYSCALLS = (
    "pidfd_open", "pidfd_getfd", "kcmp", "setresuid", "setresgid", "setgroups", "epoll_wait",
    "epoll_ctl", "eventfd2", "timerfd_create", "timerfd_settime", "inotify_init1",
    "inotify_add_watch", "sendmsg", "recvmsg", "connect", "accept4", "kill", "clone3",
    "execve", "openat", "prlimit64",
)  # fmt: skip


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file: key -> every value given (in order; a key may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[([A-Za-z]+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        assert current is not None, f"line {number}: a key before any section"
        assert not raw.endswith("\\"), f"line {number}: no continuation lines, please"
        key, sep, value = line.partition("=")
        assert sep, f"line {number}: not KEY=VALUE: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def one(unit: dict[str, dict[str, list[str]]], key: str, section: str = "Service") -> str:
    values = unit[section].get(key)
    assert values is not None and len(values) == 1, f"{key}= given {values}"
    return values[0]


def test_sections_and_command(unit) -> None:
    assert set(unit) == {"Unit", "Service", "Install"}
    assert one(unit, "WantedBy", "Install") == "multi-user.target"
    command = one(unit, "ExecStart").split()
    assert command[:2] == ["/opt/kqd/bin/kqd", "serve"]
    assert command[command.index("--listen") + 1] == "unix:///run/kqd/kqd.sock"
    assert command[command.index("--socket-group") + 1] == "kqd"
    assert command[command.index("--policy") + 1].startswith("/etc/kqd/")
    assert command[-1] == "$KQD_OPTIONS"  # unbraced: split into words by systemd
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"  # SIGHUP reloads the policy
    assert one(unit, "KillSignal") == "SIGTERM"
    assert one(unit, "Type") == "exec"


def test_directories(unit) -> None:
    """The socket lives in RuntimeDirectory (made by systemd, removed at stop), state in
    StateDirectory, the policy in ConfigurationDirectory; the socket's group is a member group
    (so the daemon needs no CAP_CHOWN to give it the socket) and exists via sysusers."""
    assert one(unit, "RuntimeDirectory") == "kqd"
    assert one(unit, "RuntimeDirectoryMode") == "0755"  # the socket itself is 0660
    assert one(unit, "StateDirectory") == "kqd"
    assert one(unit, "ConfigurationDirectory") == "kqd"
    assert one(unit, "SupplementaryGroups") == "kqd"
    entries = [line.split() for line in SYSUSERS.read_text().splitlines() if line[:1] not in "#"]
    assert ["g", "kqd", "-"] in entries


def test_hardening(unit) -> None:
    assert one(unit, "User") == "root"  # it acts as its callers: see the unit's comments
    assert set(one(unit, "CapabilityBoundingSet").split()) == CAPABILITIES
    assert one(unit, "AmbientCapabilities") == ""
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "MemoryDenyWriteExecute": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
    }.items():
        assert one(unit, key) == value, key
    families = set(one(unit, "RestrictAddressFamilies").split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}  # netlink: cn_proc


def test_what_kqd_must_see_is_not_hidden(unit) -> None:
    """Callers watch their own /tmp, /home, /dev/shm and processes: the daemon must see the
    same ones."""
    service = unit["Service"]
    assert service.get("PrivateTmp", ["no"]) == ["no"]
    assert service.get("PrivateDevices", ["no"]) == ["no"]
    assert service.get("ProtectHome", ["no"])[0] in ("no", "read-only")
    assert service.get("ProtectProc", ["default"]) == ["default"]
    assert service.get("PrivateUsers", ["no"]) == ["no"]
    assert service.get("PrivateNetwork", ["no"]) == ["no"]
    assert "DynamicUser" not in service


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "--no-pager", *args], capture_output=True, text=True, timeout=60
    )


def syscalls_in(name: str) -> set[str]:
    """The system calls a filter item names (a @group expands recursively)."""
    if not name.startswith("@"):
        return {name}
    listing = analyze("syscall-filter", name)
    assert listing.returncode == 0, listing.stderr
    found: set[str] = set()
    for line in listing.stdout.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            found |= syscalls_in(item)
    return found


@pytest.fixture(scope="module")
def scratch_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root for ``systemd-analyze --root``: the unit, stand-ins for its commands, the host's
    targets."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package)")
    if not HOST_UNITS.is_dir():
        pytest.skip(f"{HOST_UNITS} is missing: no targets to verify the unit against")
    root = tmp_path_factory.mktemp("systemd-root")
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/kqd.service")
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for target in HOST_UNITS.glob("*.target"):
        shutil.copy(target, units)
    for command in ("opt/kqd/bin/kqd", "bin/kill"):
        stand_in = root / command
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
    return root


def test_systemd_analyze_verify(scratch_root: Path) -> None:
    done = analyze(f"--root={scratch_root}", "--man=no", "verify", "kqd.service")
    if "only supported" in done.stderr or "Unknown option" in done.stderr:
        pytest.skip(f"this systemd-analyze cannot verify offline: {done.stderr.strip()}")
    # verify warns about unknown keys and bad values but still exits 0: no output at all.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_security_exposure(scratch_root: Path) -> None:
    done = analyze(f"--root={scratch_root}", "--offline=true", "security", "kqd.service")
    score = re.search(r"Overall exposure level for kqd\.service: ([0-9.]+)", done.stdout)
    if score is None:
        pytest.skip(f"no offline security analysis here: {done.stderr.strip()[:200]}")
    print(f"\nsystemd-analyze security: exposure {score.group(1)}")
    assert float(score.group(1)) <= 5.0, done.stdout


def test_syscall_filter_allows_what_kqd_calls(unit, scratch_root: Path) -> None:
    """Every system call kqd is known to make is allowed (an strace of a daemon serving root
    and unprivileged callers, helpers included, found nothing outside this filter)."""
    items = one(unit, "SystemCallFilter").split()
    assert not items[0].startswith("~"), "an allow list"
    allowed = set().union(*(syscalls_in(item) for item in items))
    missing = [name for name in SYSCALLS if name not in allowed]
    assert missing == []
