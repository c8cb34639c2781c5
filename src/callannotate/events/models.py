"""Events as they travel on the bus and over the WebSocket.

A :class:`BusEvent` is one job event after the bus gave it its per-job sequence number. It is
stored (replay buffer) and fanned out as a *record* (JSON with the owner); clients get the
*wire* form (the same without the owner), serialised once per process and shared by every
connection that receives it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, get_args

from callannotate.jobs.events import JobEventType

JOB_EVENT_TYPES: Final = frozenset(get_args(JobEventType))
#: Events a slow connection may lose to a newer one of the same type and job.
COALESCIBLE_TYPES: Final = frozenset({"job.progress"})
#: Events after which a job emits nothing more (unless it is retried).
TERMINAL_TYPES: Final = frozenset({"job.completed", "job.failed"})


def iso_ts(ts: datetime | None = None) -> str:
    """UTC timestamp with milliseconds, ``2026-01-31T12:00:00.123Z``."""
    value = (ts or datetime.now(UTC)).astimezone(UTC)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _record_body(kind: str, job_id: str, owner: str, ts: str, data: dict[str, Any]) -> str:
    """A record's JSON without ``seq`` (compact, UTF-8 kept)."""
    return json.dumps(
        {"type": kind, "job_id": job_id, "owner": owner, "ts": ts, "data": data},
        separators=(",", ":"),
        ensure_ascii=False,
    )


@dataclass(frozen=True, slots=True)
class EventDraft:
    """A job event before the bus numbers it."""

    type: str
    job_id: str
    owner: str
    data: dict[str, Any] = field(default_factory=dict)
    ts: str = field(default_factory=iso_ts)

    def __post_init__(self) -> None:
        if self.type not in JOB_EVENT_TYPES:
            raise ValueError(f"unknown job event type {self.type!r}")
        if not self.job_id:
            raise ValueError("job_id must not be empty")

    def record_body(self) -> str:
        """The record JSON without ``seq``: ``{"type":...,"job_id":...,...}``.

        The Redis bus splices ``"seq":N,`` in front of it inside its publish script.
        """
        return _record_body(self.type, self.job_id, self.owner, self.ts, self.data)


@dataclass(frozen=True, slots=True)
class BusEvent:
    """A numbered job event: what subscribers receive and the replay buffer keeps."""

    seq: int
    type: str
    job_id: str
    owner: str
    ts: str
    data: dict[str, Any]
    wire: str  # JSON sent to WebSocket clients

    @property
    def coalescible(self) -> bool:
        return self.type in COALESCIBLE_TYPES

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES

    @classmethod
    def build(cls, draft: EventDraft, seq: int) -> BusEvent:
        return cls(
            seq=seq,
            type=draft.type,
            job_id=draft.job_id,
            owner=draft.owner,
            ts=draft.ts,
            data=draft.data,
            wire=_wire(seq, draft.type, draft.job_id, draft.ts, draft.data),
        )

    @classmethod
    def from_record(cls, record: str | bytes) -> BusEvent:
        """Parse a stored/published record (raises ``ValueError`` on a malformed one)."""
        try:
            obj = json.loads(record)
            seq = int(obj["seq"])
            kind = str(obj["type"])
            job_id = str(obj["job_id"])
            owner = str(obj["owner"])
            ts = str(obj["ts"])
            data = obj.get("data") or {}
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed event record: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("malformed event record: data is not an object")
        return cls(
            seq=seq,
            type=kind,
            job_id=job_id,
            owner=owner,
            ts=ts,
            data=data,
            wire=_wire(seq, kind, job_id, ts, data),
        )

    def record(self) -> str:
        # ``seq`` spliced in front of the record body, exactly as the Redis bus does it.
        body = _record_body(self.type, self.job_id, self.owner, self.ts, self.data)
        return f'{{"seq":{self.seq},' + body[1:]


def _wire(seq: int, kind: str, job_id: str, ts: str, data: dict[str, Any]) -> str:
    return json.dumps(
        {"type": kind, "job_id": job_id, "seq": seq, "ts": ts, "data": data},
        separators=(",", ":"),
        ensure_ascii=False,
    )


@dataclass(frozen=True, slots=True)
class Replay:
    """What the buffer holds for a job after a given sequence number."""

    events: list[BusEvent]
    first_seq: int | None  # oldest sequence number still kept, None when nothing is kept
    last_seq: int  # newest sequence number issued for the job, 0 when none
    owner: str | None  # owner recorded with the job's events, None when nothing is kept

    def truncated_after(self, after_seq: int) -> bool:
        """True when events after ``after_seq`` were already dropped from the buffer."""
        return self.first_seq is not None and self.first_seq > after_seq + 1
