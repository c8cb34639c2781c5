"""The FastAPI application factory.

``create_app(settings)`` builds the app around one job service
(:func:`callannotate.jobs.service.build_job_service`, ``app.state.jobs``): the file queue
(``app.state.queue``), the event bus and the executor (``app.state.executor``: embedded worker
processes when ``settings.api.embedded_workers`` is true), started and stopped with the app's
lifespan.

Routers are listed in :data:`ROUTERS` (module paths exposing ``router``): adding a resource
is one line there.
"""

from __future__ import annotations

import gc
import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import APIRouter, FastAPI

from callannotate import __version__
from callannotate.api.audit_middleware import AuditMiddleware, close_audit_log
from callannotate.api.docs import install_docs
from callannotate.api.errors import ERROR_RESPONSES, RequestIdMiddleware, install_error_handlers
from callannotate.api.headers import SecurityHeadersMiddleware, install_cors
from callannotate.api.methods import AllowMiddleware
from callannotate.api.openapi_security import document_security
from callannotate.api.ratelimit import close_rate_limits, install_rate_limits
from callannotate.api.routes.auth import close_auth, open_auth
from callannotate.api.uploads import clean_stale_parts
from callannotate.api.ws import EventService
from callannotate.config import Settings
from callannotate.jobs.runner import JobRunner
from callannotate.jobs.service import build_job_service
from callannotate.observability.alerts.watcher import build_watcher, open_breakers
from callannotate.observability.export import MetricsExport
from callannotate.observability.middleware import MetricsMiddleware

logger = logging.getLogger(__name__)

# Routes are matched in this order: the jobs resource (status polls, the hot path) comes
# first; behind the prefix-less health router each poll cost ~80 more function calls (~7 %
# of it; issue 21). It is also the order of the OpenAPI paths.
ROUTERS: tuple[str, ...] = (
    "callannotate.api.routes.jobs",
    "callannotate.api.routes.health",
    "callannotate.api.ws",
    "callannotate.api.routes.stream",
    "callannotate.reports.routes",
    "callannotate.voices.routes",
    "callannotate.api.routes.auth",
    "callannotate.api.routes.audit",
    "callannotate.contacts.routes",
    "callannotate.api.routes.admin",
    "callannotate.api.routes.breakers",
)

DESCRIPTION = """Self-hosted annotation of call recordings: upload a recording, follow the job,
fetch the annotation (speakers, words, utterances, statistics).

Every error response carries `{"error", "detail", "request_id"}`; the same request id is in
the `X-Request-ID` response header (send your own to correlate with your logs)."""


def create_app(
    settings: Settings | None = None,
    *,
    job_runner: JobRunner | None = None,
    freeze_gc: bool = False,
) -> FastAPI:
    """Build the API for ``settings`` (read from the environment when omitted).

    ``job_runner``: what embedded workers run (the pipeline by default; tests pass fakes).
    ``freeze_gc``: once started, move every object made so far out of the cyclic garbage
    collector's sight (``gc.freeze``; ``callannotate serve`` does, one app per process). The
    start-up leaves ~200,000 tracked objects that live as long as the process, and each full
    collection scanned all of them: 55-90 ms of CPU on the event loop thread, in whichever
    request happened to allocate when it was due (7-12 ms after the freeze; issue 21).
    """
    settings = settings or Settings()
    jobs = build_job_service(settings, embedded=settings.api.embedded_workers, runner=job_runner)
    queue = jobs.queue
    events = EventService(settings, queue)
    events.bus = jobs.bus  # one bus per process: the job service's (as in `callannotate worker`)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(clean_stale_parts, queue.staging_dir())
        await events.start()  # starts the bus before the executor, which publishes from its start
        await jobs.start()
        await open_auth(app.state)  # migrates the store; says how to make the first admin
        metrics = MetricsExport(settings, queue, jobs.executor)  # gauges + metrics.port
        metrics.start()
        # built-in alerts: where the queue manager runs (docs/observability.md "Built-in alerts")
        alerts = None
        if settings.api.embedded_workers:
            breakers = lambda: open_breakers(app.state)  # noqa: E731
            alerts = build_watcher(settings, queue, jobs.executor, breakers=breakers)
        if alerts is not None:
            await alerts.start()
        logger.info("job executor %s started", jobs.executor.name)
        if freeze_gc:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            if alerts is not None:
                await alerts.stop()
            metrics.stop()
            await jobs.stop(graceful=True)
            logger.info("job executor %s stopped", jobs.executor.name)
            await events.stop()
            await close_audit_log(app)  # stores every queued audit record
            await close_rate_limits(app)  # the limiter's Redis connections
            close_auth(app.state)  # dispose of the store's engine

    app = FastAPI(
        title="CallAnnotate",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        docs_url=None,  # offline pages instead, see api/docs.py
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.queue = queue
    app.state.jobs = jobs
    app.state.executor = jobs.executor
    app.state.events = events
    install_error_handlers(app)
    install_rate_limits(app, settings)  # first: every route added below is limited
    install_docs(app)
    app.add_middleware(AllowMiddleware)
    app.add_middleware(MetricsMiddleware)  # HTTP/WS metrics; serves GET /metrics (token)
    app.add_middleware(AuditMiddleware)  # audit records of calls (inside: knows the request id)
    app.add_middleware(RequestIdMiddleware)  # ids and 500s for everything inside
    install_cors(app, settings.api)  # only with api.cors_origins; its answers get headers too
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: on every response, 500s too
    for module_name in ROUTERS:
        router = importlib.import_module(module_name).router
        if not isinstance(router, APIRouter):
            raise TypeError(f"{module_name}.router is not an APIRouter")
        app.include_router(router)
    document_security(app)  # securitySchemes, and 401/403 on every guarded operation
    return app
