"""The one reading of "answer later" for routes that can run as light work."""

from __future__ import annotations

from fastapi import Request


def wants_async(request: Request, wait: bool) -> bool:
    """``?wait=false`` or ``Prefer: respond-async`` (RFC 7240): answer 202 and work later."""
    prefer = request.headers.get("prefer", "")
    tokens = {part.strip().lower() for item in prefer.split(",") for part in item.split(";")}
    return not wait or "respond-async" in tokens
