"""EVFILT_SIGNAL: count deliveries of a signal to this process (in-process only).

The filter coexists with the program's own handlers, as FreeBSD's does, at lower precedence: kqd
installs one Python-level handler per watched signal that counts the delivery for every
subscribed knote and then does what the previous disposition would have done (call the previous
handler, ignore, or restore the default action and re-raise). Python only lets the main thread
install handlers, so the first knote for a signal must be added from the main thread. A handler
the program installs later replaces kqd's, and the knotes for that signal count nothing more
(deleting the last of them leaves the program's handler in place).

FreeBSD posts the knote in ``tdsendsignal()`` before it looks at the disposition or the signal
mask, so a knote counts signals the process ignores or blocks. On Linux:

* **Ignored** signals are discarded when they are sent, before anything in the process could
  see them. So while a knote watches a signal whose disposition was SIG_IGN, kqd's handler takes
  its place, counts, and ignores the signal itself. A handler is not quite SIG_IGN: a blocking
  system call may fail with EINTR (Python retries its own), and a program exec'd meanwhile starts
  with the default action rather than inheriting SIG_IGN. For SIGCHLD, SIG_IGN also means that
  children are reaped as they exit; kqd's handler is then installed with SA_NOCLDWAIT, which
  keeps that, and reaps a child that exited while the two were being swapped.
* **Blocked** signals are counted when they are delivered (once unblocked), not when they are
  sent, and never if the program takes them with ``sigwait()``, ``sigtimedwait()`` or a signalfd
  of its own. Linux has no way to watch a pending signal without changing what the process sees:
  signalfd and ``sigwaitinfo()`` dequeue it (the program would lose it, and queueing it again
  would reorder it and race with the program's own unblock or wait); a pending standard signal
  is one bit, so a second send while it is pending leaves no trace; and a signalfd's readiness
  only says "pending now", with wake-ups for every signal the process gets, so it cannot tell
  one send from the next nor notice that the program consumed it meanwhile.
* **Any ident** is accepted, as FreeBSD's ``filt_sigattach()`` accepts any (there a number no
  signal has simply never fires). Numbers Linux has no signal for (0, above SIGRTMAX) and the
  signals no process can see (SIGKILL, which ends it; SIGSTOP, which stops it without running any
  of its code; the realtime signals glibc keeps for itself) give knotes that never fire.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
from collections import defaultdict
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from kqd.core.constants import KQ_EV_CLEAR
from kqd.core.linux import syscalls
from kqd.core.linux.filter import Filter
from kqd.core.linux.knote import Knote
from kqd.core.linux.process_wide import ProcessWide

if TYPE_CHECKING:
    from kqd.core.linux.kqueue import Kqueue

_IGNORED_BY_DEFAULT = {signal.SIGCHLD, signal.SIGURG, signal.SIGWINCH, signal.SIGCONT}
# Signals a handler can see: valid_signals() leaves out the ones glibc reserves.
_WATCHABLE = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
SIGNALLED = object()


def _reap_exited_children() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG) is not None:
            pass


class SignalHub(ProcessWide):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[int, list[tuple[Kqueue, Callable[[], None]]]] = defaultdict(list)
        self._previous: dict[int, Any] = {}

    def subscribe(self, signum: int, kq: Kqueue, callback: Callable[[], None]) -> None:
        with self._lock:
            if signum not in self._previous:
                try:
                    previous = signal.signal(signum, self._handle)
                except ValueError as exc:
                    raise OSError(
                        errno.ENOTSUP,
                        f"cannot watch signal {signum} from this thread ({exc}); add the first "
                        "KQ_FILTER_SIGNAL knote for it from the main thread",
                    ) from None
                if signum == signal.SIGCHLD and previous == signal.SIG_IGN:
                    syscalls.add_sigaction_flags(signum, syscalls.SA_NOCLDWAIT)
                    _reap_exited_children()
                self._previous[signum] = previous
            self._subscribers[signum].append((kq, callback))

    def unsubscribe(self, signum: int, callback: Callable[[], None]) -> None:
        with self._lock:
            subs = self._subscribers[signum]
            subs[:] = [s for s in subs if s[1] is not callback]
            if subs or signum not in self._previous:
                return
            if signal.getsignal(signum) != self._handle:
                del self._previous[signum]  # the program installed a handler of its own since
                return
            previous = self._previous.pop(signum)
            try:
                signal.signal(signum, previous)
            except ValueError:
                # Not the main thread: keep counting into nobody, chaining as before.
                self._previous[signum] = previous

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        for kq, callback in list(self._subscribers.get(signum, [])):
            kq.post(callback)
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL and signum not in _IGNORED_BY_DEFAULT:
            signal.signal(signum, signal.SIG_DFL)
            try:
                os.kill(os.getpid(), signum)
            finally:
                signal.signal(signum, self._handle)


class SignalFilter(Filter):
    """ident = signal number; data = deliveries since the last report (always EV_CLEAR)."""

    def attach(self, kn: Knote) -> None:
        kn.flags |= KQ_EV_CLEAR
        if kn.ident in _WATCHABLE:
            kn.hook = lambda: self.kq.activate(kn, SIGNALLED)
            SignalHub.shared().subscribe(kn.ident, self.kq, kn.hook)

    def detach(self, kn: Knote) -> None:
        if kn.hook is not None:
            SignalHub.shared().unsubscribe(kn.ident, kn.hook)

    def event(self, kn: Knote, hint: object) -> bool:
        if hint is SIGNALLED:
            kn.data += 1
        return kn.data != 0
