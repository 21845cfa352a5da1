"""Where revisions run: the service spec, the ports the components scale and route through, and their adapters."""
