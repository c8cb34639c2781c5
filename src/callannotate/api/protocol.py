"""The HTTP protocol ``serve`` hands to uvicorn: uvicorn's own, with JSON protocol errors.

uvicorn answers a request it cannot parse (a bad request line, a malformed header, an
invalid chunk) itself, before the application sees it, with a plain-text 400. This subclass
sends the same 400 with the service's error body (``{"error", "detail", "request_id"}``) so a
client reads one error format everywhere (issue 15.16). Everything else is uvicorn's.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # uvicorn's faster parser, used when ``httptools`` is installed
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - depends on the install
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

BAD_REQUEST_DETAIL = "the request could not be parsed as HTTP/1.1"


def protocol_error_response(detail: str = BAD_REQUEST_DETAIL) -> bytes:
    """A complete ``400`` HTTP/1.1 response carrying the JSON error body."""
    body = json.dumps(
        {"error": "bad_request", "detail": detail, "request_id": "-"},
        separators=(",", ":"),
    ).encode("utf-8")
    head = (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"content-type: application/json\r\n"
        b"x-content-type-options: nosniff\r\n"
        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n"
        b"connection: close\r\n\r\n"
    )
    return head + body


class JsonErrorH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a JSON body on its own 400s."""

    def send_400_response(self, msg: str) -> None:
        self.transport.write(protocol_error_response())
        self.transport.close()


if HttpToolsProtocol is not None:

    class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with a JSON body on its own 400s."""

        def send_400_response(self, msg: str) -> None:
            self.transport.write(protocol_error_response())
            self.transport.close()

    HTTP_PROTOCOL: type[H11Protocol] | type[HttpToolsProtocol] = JsonErrorHttpToolsProtocol
else:  # pragma: no cover - depends on the install
    HTTP_PROTOCOL = JsonErrorH11Protocol
