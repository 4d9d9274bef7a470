"""kqclient: remote kqueues hosted by ``kqd serve``.

```python
import kqclient
with kqclient.connect("unix:///run/kqd/kqd.sock") as client:
    kq = client.kqueue()
    kq.control([kqclient.kevent(pid, kqclient.KQ_FILTER_PROC, kqclient.KQ_EV_ADD,
                                kqclient.KQ_NOTE_EXIT, 0, b"job-17")], 0)
    for ev in kq.stream():
        ...
```
Re-exports ``kevent`` and every ``KQ_*`` constant; imports no Linux-only module.
"""

from kqclient.errors import DaemonUnavailable, KqdError, QueueNotFound, ResumeGap
from kqclient.remote import Client, RemoteKqueue, connect, wait_for_daemon
from kqclient.target import TlsClientFiles, resolve_target
from kqd.core import constants as _constants
from kqd.core.constants import *  # noqa: F403
from kqd.core.kevent import kevent
from kqd.default_socket import default_socket

__all__ = [
    "Client",
    "DaemonUnavailable",
    "KqdError",
    "QueueNotFound",
    "RemoteKqueue",
    "ResumeGap",
    "TlsClientFiles",
    "connect",
    "default_socket",
    "kevent",
    "resolve_target",
    "wait_for_daemon",
    *sorted(n for n in vars(_constants) if n.startswith("KQ_")),
]
