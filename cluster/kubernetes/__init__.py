"""The Kubernetes adapter: Deployments, EndpointSlices, ConfigMaps and Leases through kubernetes.aio."""
