"""Benchmarks of each hop and of the decider, and (in their own environment) locust load tests."""
