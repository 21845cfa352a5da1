"""The queue-proxy sidecar: proxy, breaker, stats, probes, drain and timeouts in front of one model server."""
