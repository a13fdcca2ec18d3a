"""Benchmarks of the broker, run against a real broker process on 127.0.0.1."""
