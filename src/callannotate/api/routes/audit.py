"""``/audit``: the audit log for admins, as JSON pages or a CSV download.

Both routes need an admin (:data:`~callannotate.api.deps.AdminPrincipal`: 401 anonymous, 403
for a non-admin). Reading the log is itself recorded (``audit.read``, ``audit.read_export``).
Records come newest first in ``GET /audit`` and oldest first in the CSV; the CSV's text cells
are neutralised against spreadsheet formulas with the same helper as the report exports.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.requests import HTTPConnection

from callannotate.api.audit_middleware import audit_log_for
from callannotate.api.deps import AdminPrincipal
from callannotate.api.errors import error_responses
from callannotate.db.models import AuditEvent
from callannotate.errors import BadRequest
from callannotate.reports.exporters import csv_cell
from callannotate.security.audit import OUTCOMES
from callannotate.security.audit_store import AuditFilter, AuditStore

router = APIRouter(prefix="/audit", tags=["audit"], responses=error_responses(401, 403))

CSV_COLUMNS = (
    "seq",
    "time",
    "principal_id",
    "client_ip",
    "user_agent",
    "request_id",
    "action",
    "verb",
    "resource_type",
    "resource_id",
    "outcome",
    "status",
    "detail",
    "prev_hash",
    "hash",
)


class AuditRecord(BaseModel):
    seq: int = Field(description="Position in the chain (1, 2, 3 ...).")
    time: datetime
    principal_id: str | None = Field(description="Who acted (user id; null when anonymous).")
    client_ip: str | None
    user_agent: str | None
    request_id: str | None = Field(description="The request's X-Request-ID.")
    action: str = Field(description="<resource_type>.<verb>, e.g. job.delete or auth.login.")
    verb: str
    resource_type: str
    resource_id: str | None
    outcome: Literal["ok", "denied", "failed"]
    status: int | None = Field(description="HTTP status when the record is of an HTTP call.")
    detail: dict[str, Any]
    prev_hash: str
    hash: str = Field(description="sha256 of this record's canonical JSON and prev_hash.")

    @classmethod
    def of(cls, row: AuditEvent) -> AuditRecord:
        return cls(
            seq=row.seq,
            time=row.time,
            principal_id=row.principal_id,
            client_ip=row.client_ip,
            user_agent=row.user_agent,
            request_id=row.request_id,
            action=row.action,
            verb=row.verb,
            resource_type=row.resource_type,
            resource_id=row.resource_id,
            outcome=row.outcome,
            status=row.status,
            detail=dict(row.detail or {}),
            prev_hash=row.prev_hash,
            hash=row.hash,
        )


class AuditPage(BaseModel):
    items: list[AuditRecord]
    total: int = Field(description="Records matching the filter, over all pages.")
    offset: int
    limit: int


def audit_filter(
    principal: Annotated[
        str | None, Query(max_length=64, description="Only this principal (user id).")
    ] = None,
    action: Annotated[
        str | None,
        Query(
            max_length=96,
            description="Only this action (job.delete); 'job.*' for every action on jobs.",
        ),
    ] = None,
    resource_type: Annotated[str | None, Query(max_length=32)] = None,
    resource_id: Annotated[str | None, Query(max_length=128)] = None,
    outcome: Annotated[
        Literal["ok", "denied", "failed"] | None, Query(description="ok, denied or failed.")
    ] = None,
    since: Annotated[
        datetime | None, Query(description="From this time on (ISO 8601, inclusive).")
    ] = None,
    until: Annotated[
        datetime | None, Query(description="Before this time (ISO 8601, exclusive).")
    ] = None,
) -> AuditFilter:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise BadRequest(f"{name} needs a time zone, e.g. 2026-12-03T08:00:00Z")
    assert outcome is None or outcome in OUTCOMES
    return AuditFilter(
        principal_id=principal,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        outcome=outcome,
        since=since,
        until=until,
    )


FilterDep = Annotated[AuditFilter, Depends(audit_filter)]


def _store(conn: HTTPConnection) -> AuditStore:
    return audit_log_for(conn.app.state).store


@router.get("", response_model=AuditPage, summary="Audit records, newest first (admin)")
async def list_audit(
    conn: HTTPConnection,
    admin: AdminPrincipal,
    where: FilterDep,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    audit = audit_log_for(conn.app.state)
    await anyio.to_thread.run_sync(audit.ensure_schema)
    rows, total = await anyio.to_thread.run_sync(
        lambda: audit.store.query(where, offset=offset, limit=limit)
    )
    return AuditPage(
        items=[AuditRecord.of(r) for r in rows], total=total, offset=offset, limit=limit
    )


def _csv_rows(store: AuditStore, where: AuditFilter) -> Iterator[bytes]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    buf.write("\ufeff")  # Excel opens UTF-8 (Cyrillic names) correctly with a BOM
    writer.writerow(CSV_COLUMNS)
    for count, row in enumerate(store.iter_matching(where), start=1):
        record = AuditRecord.of(row).model_dump(mode="json")
        record["detail"] = json.dumps(record["detail"], ensure_ascii=False, sort_keys=True)
        writer.writerow([csv_cell(_text(record[c])) for c in CSV_COLUMNS])
        if count % 200 == 0:
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode("utf-8")


def _text(value: Any) -> Any:
    return "" if value is None else value


@router.get(
    "/export",
    summary="Audit records as CSV, oldest first (admin)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "The records as CSV."}},
)
async def export_audit(conn: HTTPConnection, admin: AdminPrincipal, where: FilterDep) -> Any:
    audit = audit_log_for(conn.app.state)
    await anyio.to_thread.run_sync(audit.ensure_schema)
    rows = _csv_rows(audit.store, where)

    async def body() -> Any:
        while True:
            chunk = await anyio.to_thread.run_sync(next, rows, None)
            if chunk is None:
                return
            yield chunk

    return StreamingResponse(
        body(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
    )
