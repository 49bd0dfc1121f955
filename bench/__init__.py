"""Benchmarks that print tables (medians and p99). Not timed tests."""
