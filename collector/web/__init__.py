"""The collector's read-only HTTP side: dashboard, JSON API, /metrics, health."""
