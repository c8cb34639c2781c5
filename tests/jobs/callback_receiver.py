"""A real HTTP callback receiver on 127.0.0.1 for the callback tests (``http.server``)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from callannotate.jobs.callbacks import SIGNATURE_HEADER, verify_signature

SECRET = "s3cret-for-tests"


@dataclass
class Receiver:
    """Answers ``statuses`` in order (then 200); 401 for a bad signature."""

    statuses: list[int] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    def url(self, host: str = "127.0.0.1", path: str = "/hook") -> str:
        return f"http://{host}:{self.port}{path}"


@contextlib.contextmanager
def serve_receiver() -> Iterator[Receiver]:
    """A receiver checking signatures with :data:`SECRET` the way the docs say."""
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            signature = self.headers.get(SIGNATURE_HEADER, "")
            valid = verify_signature(SECRET.encode(), body, signature)
            state.requests.append(
                {"headers": dict(self.headers), "body": body, "valid": valid, "path": self.path}
            )
            status = state.statuses.pop(0) if state.statuses else 200
            if not valid:
                status = 401
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
