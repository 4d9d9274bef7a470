"""kqd: kqueue semantics on Linux, in process and over the network."""

__version__ = "0.1.0"
