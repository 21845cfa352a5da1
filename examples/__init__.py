"""Example model servers and service specs used by the README, the demos and the tests."""
