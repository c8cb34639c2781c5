"""Which web pages may open the WebSockets: the ``Origin`` check.

Browsers do not apply the same-origin policy to WebSockets: any page, on any site, can open
``ws://service/ws/x`` with the user's cookies and read what comes back. The server must check
the ``Origin`` header a browser always sends on a WebSocket handshake. Allowed:

* no ``Origin`` header at all: not a browser (CLI, scripts, other services);
* the server's own origin: the origin's host and port equal the request's ``Host`` header
  (ports compared with the scheme's default filled in), or equal ``api.public_url``'s origin;
* an origin listed in ``api.allowed_origins`` (``scheme://host[:port]``; ``*`` allows any).

``Origin: null`` (sandboxed frames, ``file:`` pages) is refused unless ``null`` is listed.
The handshake of a refused origin is rejected before it is accepted (HTTP 403).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from callannotate.config import ApiSettings

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

Origin = tuple[str, str, int]
"""(scheme, lower-case host, port) of a normalised origin."""


def parse_origin(value: str) -> Origin | None:
    """``scheme://host[:port]`` as a normalised tuple; ``None`` when it is not one."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return scheme, host, port if port is not None else DEFAULT_PORTS[scheme]


def _host_matches(origin: Origin, host_header: str) -> bool:
    """Whether ``Host: host_header`` names the same host and port as ``origin``."""
    try:
        parts = urlsplit(f"//{host_header.strip()}")
        port = parts.port
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    return bool(host) and (host, port or DEFAULT_PORTS[origin[0]]) == origin[1:]


def origin_allowed(conn: HTTPConnection, api: ApiSettings) -> bool:
    """Whether the page that opened ``conn`` may use the WebSockets (see the module doc)."""
    raw = conn.headers.get("origin")
    if raw is None:
        return True
    allowed = [entry.strip() for entry in api.allowed_origins]
    if "*" in allowed or raw.strip() in allowed:
        return True
    origin = parse_origin(raw)
    if origin is None:
        return False
    if any(parse_origin(entry) == origin for entry in allowed):
        return True
    if api.public_url and parse_origin(api.public_url) == origin:
        return True
    return _host_matches(origin, conn.headers.get("host", ""))
