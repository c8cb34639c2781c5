"""Observability: structured logging (and, later, metrics and tracing)."""
