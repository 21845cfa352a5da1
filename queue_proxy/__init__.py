"""The queue-proxy sidecar: proxy, breaker, stats, probes, drain and timeouts in front of one model server."""

import dataplane  # noqa: F401  (first: it sets up ZEROSERVE_PURE_PYTHON=1)
