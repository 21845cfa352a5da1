"""The activator: the ingress that routes, throttles, load-balances and buffers requests to revisions."""
