"""Circuit breakers and retries around external dependencies (docs/scale-out.md, "Failure
handling")."""
