"""kqd benchmarks: ``python -m bench <name>`` (see ``python -m bench --help``)."""
