"""kqd daemon: the core hosted behind gRPC (kqd serve)."""
