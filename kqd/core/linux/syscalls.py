"""The few Linux system calls Python 3.11's standard library does not wrap.

Everything else comes from ``os``, ``select``, ``fcntl`` and ``socket``; inotify comes from
``inotify_simple``. This is the only ctypes module in kqd.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import re
import struct

_libc = ctypes.CDLL(None, use_errno=True)

# x86_64 and aarch64 share the generic numbers for these (kcmp differs).
_SYS_KCMP = {"x86_64": 312, "aarch64": 272}.get(os.uname().machine)
_SYS_PIDFD_GETFD = 438
_KCMP_FILE = 0

TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
TFD_TIMER_ABSTIME = 1
_CLOCK_MONOTONIC = 1

# struct pidfd_info (Linux >= 6.13; exit fields >= 6.15), asked with ioctl PIDFD_GET_INFO.
_PIDFD_GET_INFO = 0xC050FF0B
_PIDFD_INFO = struct.Struct("<QQ11IiIIQ")
_PIDFD_INFO_EXIT = 0x8
_PIDFD_INFO_EXIT_CODE_FIELD = 13
_PIDFD_INFO_EXIT_SINCE = (6, 15)

SA_NOCLDWAIT = 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _Sigaction(ctypes.Structure):
    """glibc's ``struct sigaction`` on 64-bit Linux (x86_64 and aarch64 share it)."""

    _fields_ = [
        ("handler", ctypes.c_void_p),
        ("mask", ctypes.c_ulong * 16),
        ("flags", ctypes.c_int),
        ("restorer", ctypes.c_void_p),
    ]


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def timerfd_create() -> int:
    """A non-blocking, close-on-exec CLOCK_MONOTONIC timerfd."""
    return _check(_libc.timerfd_create(_CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC))


def timerfd_arm(fd: int, deadline_ns: int | None) -> None:
    """Arm *fd* to fire once at the absolute CLOCK_MONOTONIC time *deadline_ns*; None disarms."""
    spec = _Itimerspec()
    if deadline_ns is not None:
        # A zero it_value disarms, so an already-passed deadline is clamped to 1 ns.
        deadline_ns = max(deadline_ns, 1)
        spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(deadline_ns, 1_000_000_000)
    _check(_libc.timerfd_settime(fd, TFD_TIMER_ABSTIME, ctypes.byref(spec), None))


def same_file_description(pid1: int, fd1: int, pid2: int, fd2: int) -> bool:
    """Whether descriptor *fd1* of *pid1* and *fd2* of *pid2* share one open file description
    (kcmp; OSError ESRCH or EBADF when a process or descriptor is gone)."""
    if _SYS_KCMP is None:
        raise OSError(errno.ENOSYS, "kcmp is not known on this architecture")
    return _check(_libc.syscall(_SYS_KCMP, pid1, pid2, _KCMP_FILE, fd1, fd2)) == 0


def same_open_file(fd1: int, fd2: int) -> bool:
    """Whether two of this process's descriptors share one open file description."""
    pid = os.getpid()
    return same_file_description(pid, fd1, pid, fd2)


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """A duplicate of descriptor *target_fd* of the process behind *pidfd* (close-on-exec)."""
    return _check(_libc.syscall(_SYS_PIDFD_GETFD, pidfd, target_fd, 0))


def pidfd_exit_code(pidfd: int) -> int | None:
    """The wait(2) status of the reaped process behind *pidfd*, or None while unknown.

    The kernel fills the exit fields only once the real parent has reaped the process, and only
    since Linux 6.15; before that (or on older kernels) this answers None.
    """
    buf = bytearray(_PIDFD_INFO.size)
    struct.pack_into("<Q", buf, 0, _PIDFD_INFO_EXIT)
    try:
        fcntl.ioctl(pidfd, _PIDFD_GET_INFO, buf, True)
    except OSError:
        return None
    fields = _PIDFD_INFO.unpack(buf)
    if not fields[0] & _PIDFD_INFO_EXIT:
        return None
    return int(fields[_PIDFD_INFO_EXIT_CODE_FIELD])


@functools.cache
def pidfd_exit_code_supported() -> bool:
    """Does this kernel report exit codes through PIDFD_GET_INFO (Linux >= 6.15)?

    Only a reaped process could show it, so the kernel version is the cheap way to ask.
    """
    found = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return found is not None and (int(found[1]), int(found[2])) >= _PIDFD_INFO_EXIT_SINCE


def add_sigaction_flags(signum: int, flags: int) -> None:
    """Add SA_* *flags* to the current action of *signum*, keeping its handler and mask."""
    action = _Sigaction()
    _check(_libc.sigaction(signum, None, ctypes.byref(action)))
    action.flags |= flags
    _check(_libc.sigaction(signum, ctypes.byref(action), None))
