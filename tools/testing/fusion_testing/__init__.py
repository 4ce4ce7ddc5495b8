"""Launchers of the real services the test suite and the benchmarks need."""
