"""Benchmarks of RobustKD-FM. `make bench` runs `benchmarks/bench.py`; none of them is a test."""
