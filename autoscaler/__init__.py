"""Knative's KPA: configuration, the pure decider, stat collection and the loop that scales revisions."""
