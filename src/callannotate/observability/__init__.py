"""Observability: structured logs, Prometheus metrics, health checks (docs/observability.md)."""
