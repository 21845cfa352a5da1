"""Stats model and accounting, Knative's time windows, Prometheus helpers and the NVML GPU probe."""
