"""One alert notice: what a webhook receives as JSON and an e-mail as text."""

from __future__ import annotations

import json
import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from callannotate import __version__

Status = Literal["firing", "resolved"]


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


@dataclass(frozen=True)
class Notice:
    """``status`` firing (first notice or a repeat, ``sequence`` 1, 2, ...) or resolved."""

    alert: str
    status: Status
    severity: str
    summary: str
    details: dict[str, Any]
    started_at: float  # unix time the condition was first seen firing
    ended_at: float | None = None
    sequence: int = 1
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def event(self) -> str:
        return f"alert.{self.status}"

    def payload(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "id": self.id,
            "alert": self.alert,
            "status": self.status,
            "severity": self.severity,
            "summary": self.summary,
            "details": self.details,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "sequence": self.sequence,
            "repeat": self.status == "firing" and self.sequence > 1,
            "service": {
                "name": "callannotate",
                "host": socket.gethostname(),
                "version": __version__,
            },
        }

    def to_json(self) -> bytes:
        return json.dumps(self.payload(), separators=(",", ":"), sort_keys=True).encode()

    def subject(self) -> str:
        word = "RESOLVED" if self.status == "resolved" else self.severity.upper()
        again = (
            f" (repeat {self.sequence - 1})"
            if self.status == "firing" and self.sequence > 1
            else ""
        )
        return f"[CallAnnotate {word}] {self.alert}{again}: {self.summary}"[:200]

    def text(self) -> str:
        lines = [
            f"Alert:    {self.alert}",
            f"Status:   {self.status}",
            f"Severity: {self.severity}",
            f"Since:    {_iso(self.started_at)}",
        ]
        if self.ended_at is not None:
            lines.append(f"Cleared:  {_iso(self.ended_at)}")
        lines += ["", self.summary, ""]
        lines += [f"{key}: {value}" for key, value in sorted(self.details.items())]
        lines += ["", f"host {socket.gethostname()}, CallAnnotate {__version__}"]
        return "\n".join(lines) + "\n"
