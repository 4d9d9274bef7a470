"""EVFILT_SIGNAL: count deliveries of a signal to this process (in-process only).

The filter coexists with the program's own handlers, as FreeBSD's does, at lower precedence: kqd
installs one Python-level handler per watched signal that counts the delivery for every
subscribed knote and then does what the previous disposition would have done (call the previous
handler, ignore, or restore the default action and re-raise). Python only lets the main thread
install handlers, so the first knote for a signal must be added from the main thread.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections import defaultdict
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from kqd.core.constants import KQ_EV_CLEAR
from kqd.core.linux.filter import Filter
from kqd.core.linux.knote import Knote
from kqd.core.linux.process_wide import ProcessWide

if TYPE_CHECKING:
    from kqd.core.linux.kqueue import Kqueue

_IGNORED_BY_DEFAULT = {signal.SIGCHLD, signal.SIGURG, signal.SIGWINCH, signal.SIGCONT}
SIGNALLED = object()


class SignalHub(ProcessWide):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[int, list[tuple[Kqueue, Callable[[], None]]]] = defaultdict(list)
        self._previous: dict[int, Any] = {}

    def subscribe(self, signum: int, kq: Kqueue, callback: Callable[[], None]) -> None:
        with self._lock:
            if signum not in self._previous:
                try:
                    self._previous[signum] = signal.signal(signum, self._handle)
                except ValueError as exc:
                    raise OSError(
                        errno.ENOTSUP,
                        f"cannot watch signal {signum} from this thread ({exc}); add the first "
                        "KQ_FILTER_SIGNAL knote for it from the main thread",
                    ) from None
            self._subscribers[signum].append((kq, callback))

    def unsubscribe(self, signum: int, callback: Callable[[], None]) -> None:
        with self._lock:
            subs = self._subscribers[signum]
            subs[:] = [s for s in subs if s[1] is not callback]
            if not subs and signum in self._previous:
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
        if not 0 < kn.ident < signal.NSIG or kn.ident in (signal.SIGKILL, signal.SIGSTOP):
            raise OSError(errno.EINVAL, f"{kn.ident} is not a signal that can be watched")
        kn.flags |= KQ_EV_CLEAR
        kn.hook = lambda: self.kq.activate(kn, SIGNALLED)
        SignalHub.shared().subscribe(kn.ident, self.kq, kn.hook)

    def detach(self, kn: Knote) -> None:
        SignalHub.shared().unsubscribe(kn.ident, kn.hook)

    def event(self, kn: Knote, hint: object) -> bool:
        if hint is SIGNALLED:
            kn.data += 1
        return kn.data != 0
