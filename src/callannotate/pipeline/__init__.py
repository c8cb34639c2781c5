"""The annotation pipeline. Knows nothing about HTTP, queues or databases."""
