"""Benchmarks of the automation engine (`python -m bench.engine`)."""
