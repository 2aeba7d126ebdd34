"""Deployment helpers: the k8s/ manifest generator, tool discovery and the container health check."""
