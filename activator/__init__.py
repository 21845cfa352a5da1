"""The activator: the ingress that routes, throttles, load-balances and buffers requests to revisions."""

import dataplane  # noqa: F401  (first: it sets up ZEROSERVE_PURE_PYTHON=1)
