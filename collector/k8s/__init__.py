"""Names from the Kubernetes API: who held an IP when, and when endpoint sets changed."""
