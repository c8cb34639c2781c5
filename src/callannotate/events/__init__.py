"""Job events: the bus (in-process or Redis), replay buffers and WebSocket fan-out."""
