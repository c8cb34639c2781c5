"""Signed report-viewer links: open ``/jobs/{id}/report`` and its audio in a browser.

A browser that navigates to a URL sends no ``Authorization`` header, so with authentication
on the report page and its ``<audio>`` need another credential. ``POST
/jobs/{id}/report-link`` (a reader of the job: its owner or an admin) answers a link made by
:func:`signed_path`: the report path with ``exp``, ``kid`` and ``sig``
(:mod:`callannotate.security.links`), signed for the purpose ``report``, the job id and the
job's owner, valid ``auth.report_link_ttl_s``.

:data:`ReportReader` and :data:`AudioReader` are the principals of those two routes: the
caller of an ``Authorization`` / ``X-API-Key`` credential with the ``read`` scope, as on every
``GET``; or, when the request carries no such credential but link parameters, the job's
owner, read-only (scope ``read``, no role, ``auth_method="link"``), once the link verifies
for that route's purpose, that job and its current owner, and the owner's account is enabled.
Anything else is a 401. Only these two routes take links: everywhere else the parameters are
ignored and the request is anonymous. With authentication on, the report page refers to its
audio by a link of its own (purpose ``audio``, signed at render for ``auth.report_link_ttl_s``),
so the player works; ``Referrer-Policy: no-referrer`` (every response) keeps both from leaking,
and the audit log redacts ``sig``.

With ``auth.enabled`` false nothing is signed: every request is the local admin, and the
link is the plain path.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated
from urllib.parse import urlencode

import anyio
from fastapi import Depends, Query
from starlette.requests import HTTPConnection

from callannotate.api.deps import ReadPrincipal, visible_job
from callannotate.api.routes.auth import get_auth_service
from callannotate.config import Settings
from callannotate.errors import NotFound
from callannotate.jobs.filequeue import FileQueue, valid_job_id
from callannotate.jobs.models import Job
from callannotate.observability.metrics import observe_auth_failure
from callannotate.security.authenticate import credential_from
from callannotate.security.errors import AuthenticationFailed
from callannotate.security.links import (
    LINK_PARAMS,
    LinkClaims,
    parse_link,
    sign_link,
    verify_link,
)
from callannotate.security.principal import LOCAL_USER_ID, Principal
from callannotate.security.scopes import READ
from callannotate.security.service import AuthService

REPORT = "report"
AUDIO = "audio"
_EXP_DOC = "Signed link (POST /jobs/{job_id}/report-link): Unix time it expires."
_KID_DOC = "Signed link: the id of the key it was signed under."
_SIG_DOC = "Signed link: the signature; instead of an Authorization header."
_LINK_JOB = "link_job"  # conn.state attribute: the job a link was verified against


async def signed_path(
    conn: HTTPConnection, path: str, purpose: str, job_id: str, owner: str, expires_at: int
) -> str:
    """``path`` with the link parameters for ``purpose`` on ``job_id`` of ``owner``."""
    service = await get_auth_service(conn)
    params = sign_link(service.keyring, LinkClaims(purpose, job_id, owner, expires_at))
    return f"{path}?{urlencode(params)}"


def link_expiry(settings: Settings) -> int:
    """Unix time a link signed now stops working."""
    return int(time.time()) + settings.auth.report_link_ttl_s


def _link_principal(
    service: AuthService, queue: FileQueue, job_id: str, purpose: str, query: dict[str, str]
) -> tuple[Principal, Job]:
    params = parse_link(query)
    try:
        job = queue.get(job_id) if valid_job_id(job_id) else None
    except NotFound:
        job = None
    if job is None:
        raise AuthenticationFailed("invalid link")
    owner = job.owner
    verify_link(service.keyring, params, purpose, job_id, owner)
    if owner != LOCAL_USER_ID and not service.user_active(owner):
        raise AuthenticationFailed("invalid link", reason="disabled")
    principal = Principal(
        id=owner,
        scopes=frozenset({READ}),
        auth_method="link",
        credential_id=f"{purpose}-link",
        expires_at=params.expires_at,
    )
    return principal, job


def reader_job(conn: HTTPConnection, queue: FileQueue, job_id: str, principal: Principal) -> Job:
    """The job of a report or audio request: the one its link was verified against (read
    once, owned by the link's principal), else :func:`visible_job`. Blocking: run it in a
    worker thread."""
    job: Job | None = getattr(conn.state, _LINK_JOB, None)
    if job is not None and job.id == job_id and principal.id == job.owner:
        return job
    return visible_job(queue, job_id, principal)


def link_principal(purpose: str) -> Callable[..., Awaitable[None]]:
    """A dependency that authenticates a ``purpose`` link, when the request carries one and no
    other credential: it leaves the link's principal in ``conn.state.principal``, where
    :func:`~callannotate.api.deps.get_current_principal` finds it (and the audit record names
    it), and the job it verified the link against in ``conn.state`` for :func:`reader_job`;
    401 for a link that does not verify. It must run before the route's principal."""

    async def from_link(
        conn: HTTPConnection,
        exp: Annotated[str | None, Query(description=_EXP_DOC)] = None,
        kid: Annotated[str | None, Query(description=_KID_DOC)] = None,
        sig: Annotated[str | None, Query(description=_SIG_DOC)] = None,
    ) -> None:
        settings: Settings = conn.app.state.settings
        query = {k: v for k, v in zip(LINK_PARAMS, (exp, kid, sig), strict=True) if v is not None}
        if not settings.auth.enabled or not query or credential_from(conn) is not None:
            return
        service = await get_auth_service(conn)
        queue: FileQueue = conn.app.state.queue
        job_id = str(conn.path_params.get("job_id", ""))
        try:
            principal, job = await anyio.to_thread.run_sync(
                _link_principal, service, queue, job_id, purpose, query
            )
        except AuthenticationFailed as exc:
            observe_auth_failure(exc.reason)
            raise
        conn.state.principal = principal
        setattr(conn.state, _LINK_JOB, job)

    from_link.__name__ = f"{purpose}_link"
    return from_link


_report_link = link_principal(REPORT)
_audio_link = link_principal(AUDIO)


async def report_reader(
    _link: Annotated[None, Depends(_report_link)], principal: ReadPrincipal
) -> Principal:
    """The reader of the report page: a ``report`` link's principal or ``ReadPrincipal``."""
    return principal


async def audio_reader(
    _link: Annotated[None, Depends(_audio_link)], principal: ReadPrincipal
) -> Principal:
    """The reader of the job's audio: an ``audio`` link's principal or ``ReadPrincipal``."""
    return principal


ReportReader = Annotated[Principal, Depends(report_reader)]
AudioReader = Annotated[Principal, Depends(audio_reader)]
