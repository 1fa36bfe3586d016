"""The project's benchmarks, run by `make bench`: throughput.py, then latency.py."""
