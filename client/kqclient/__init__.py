"""kqclient: the kqd client library (remote kqueues over gRPC)."""
