"""Bounds on what a WebSocket client may send, checked before anything is parsed.

Both WebSockets (``/ws/{client_id}`` and ``/stream``) read JSON text messages. ``json.loads``
recurses once per nesting level, so ``[`` x 30,000 crashed the handler with a
``RecursionError`` (60 kB is enough); and a message is held whole in memory. So a text message
is refused when it is longer than a byte limit, and its bracket depth is counted with a cheap
scan (string contents skipped) before it is parsed.

The errors carry the WebSocket close code the server uses (RFC 6455): 1009 "message too big",
1007 "invalid payload data".
"""

from __future__ import annotations

import json
import re
from typing import Any

from callannotate.errors import BadRequest, PayloadTooLarge

CLOSE_INVALID_PAYLOAD = 1007
CLOSE_MESSAGE_TOO_BIG = 1009

# A JSON string: quotes around anything but a quote or backslash, or an escape. Unambiguous,
# so matching is linear in the text length.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


class MessageTooBig(PayloadTooLarge):
    """A client message longer than the configured limit (close 1009)."""

    code = "message_too_big"
    close_code = CLOSE_MESSAGE_TOO_BIG


class InvalidPayload(BadRequest):
    """A client message that is not JSON or nests deeper than allowed (close 1007)."""

    code = "invalid_payload"
    close_code = CLOSE_INVALID_PAYLOAD


def text_size(text: str) -> int:
    """UTF-8 length of ``text``; only encodes when the character count cannot decide."""
    return len(text.encode("utf-8", "surrogatepass")) if not text.isascii() else len(text)


def json_depth_exceeds(text: str, max_depth: int) -> bool:
    """Whether the brackets of ``text`` nest deeper than ``max_depth`` (strings skipped).

    Stops at the first bracket past the limit, so a hostile message costs ``max_depth`` steps.
    Unbalanced text is not judged here: ``json.loads`` refuses it.
    """
    depth = 0
    for match in _BRACKETS.finditer(_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1
    return False


def parse_message(text: str, *, max_bytes: int, max_depth: int) -> Any:
    """Parse one client text message within the limits.

    Raises :class:`MessageTooBig` or :class:`InvalidPayload` (not JSON, or too deep).
    """
    if len(text) > max_bytes or text_size(text) > max_bytes:
        raise MessageTooBig(f"a text message may hold at most {max_bytes} bytes")
    if json_depth_exceeds(text, max_depth):
        raise InvalidPayload(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and lone surrogates
        raise InvalidPayload("text messages must be JSON") from exc
