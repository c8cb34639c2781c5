"""``wants_async``: how a route that can run as light work is asked to answer 202."""

from __future__ import annotations

from starlette.requests import Request

from callannotate.api.prefer import wants_async


def _request(prefer: str | None) -> Request:
    headers = [(b"prefer", prefer.encode())] if prefer is not None else []
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers})


def test_async_is_asked_by_query_or_prefer_header() -> None:
    assert not wants_async(_request(None), True)
    assert wants_async(_request(None), False)  # ?wait=false
    assert wants_async(_request("respond-async, wait=10"), True)
    assert wants_async(_request("handling=lenient; respond-async"), True)
    assert wants_async(_request("Respond-Async"), True)
    assert not wants_async(_request("return=minimal"), True)
