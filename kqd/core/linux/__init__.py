"""The Linux backend of the kqd core: kqueue on epoll, pidfd, inotify, timerfd and eventfd."""

from kqd.core.linux.kqueue import Kqueue

__all__ = ["Kqueue"]
